"""A reference recording's codec codes (ICL voice clone prompts), from a CUDA graph.

Why: `speech_tokenizer.encode` runs the codec's Mimi encoder eagerly: a few hundred small
launches (the SEANet convs, an 8-layer transformer, 16 quantizer levels), each a Python op.
On an H200 that took ~40 ms for a 10 s reference, most of a new reference's time to first
audio, and beside a busy frame loop every op also waits for the GIL. A replayed graph is
one launch.

A graph needs a fixed shape, so the recording is padded with zeros on the right to a
length bucket (`BUCKET_SAMPLES`). Zero samples are not what the eager encoder sees,
though: each of its causal convs pads its own input with zeros to a whole number of
strides, in that layer's space, where the latents of silent audio are not zero. So the
last, partial frame's codes would differ. A forward pre-hook on each conv therefore makes
its input past the length it has in the unpadded run (`_valid_lengths`) what its padding
would be there (zeros; the downsample's "replicate" padding repeats the last latent): every
conv then computes, for the frames the recording has, exactly what it computes unpadded. The hooks
act only inside `ReferenceCodes`' own runs, in their thread; everyone else's calls see the
model unchanged (the convs' forward, swapped during a run for one that keeps its sizes on
the host, computes the same).
The encoder is causal end to end (convs and the sliding-window transformer), so the
padding cannot reach earlier frames.

Modes: "exact" is qwen-tts' own `speech_tokenizer.encode` (the default on the CPU and in
float32), "padded" the masked padded run without a graph (what the CPU tests compare with
"exact"), "graphed" the padded run captured per bucket (the default on CUDA in bf16/fp16).
A bucket whose capture fails, or a reference longer than `MAX_GRAPHED_SAMPLES`, runs
eagerly, padded. In float32 on the CPU the padded codes equal qwen-tts' exactly (tests).
In bf16 on CUDA a padded length runs other conv algorithms, whose rounding moved a few
frames' codes on an H200 (1.7B Base: 2 of 38 frames at 3 s, 7 of 129 at 10.3 s, none at
6, 10 and 20 s), as any change of shape can in bf16; the engine then uses these codes on
both sides of its parity checks (the prompt is built once).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from fastqwen.constants import SAMPLE_RATE

log = logging.getLogger(__name__)

BUCKET_SAMPLES = 48_000  # 2 s at 24 kHz: 25 codec frames; a 10 s reference pads by < 2 s
MAX_GRAPHED_SAMPLES = 30 * SAMPLE_RATE  # longer references encode eagerly (rare; costly to hold)
Mode = Literal["exact", "padded", "graphed"]


def bucket_samples(n: int) -> int:
    """The padded length of an `n`-sample recording: the next multiple of `BUCKET_SAMPLES`."""
    return -(-n // BUCKET_SAMPLES) * BUCKET_SAMPLES


class ReferenceCodes:
    """`speech_tokenizer.encode([wav], sr=24000).audio_codes[0]`, the same codes, faster.

    `start(wav)` launches the encoding and returns a function that waits for it and gives
    the (frames, books) int64 codes on the tokenizer's device: the caller can compute the
    speaker embedding in between. `encode(wav)` does both at once. Thread-safe: runs take
    turns (they share the graphs' input buffers).
    """

    def __init__(self, tokenizer, mode: Mode | None = None):
        self.tokenizer = tokenizer
        self.model = tokenizer.model  # Qwen3TTSTokenizerV2Model
        self.device = torch.device(tokenizer.device)
        if mode is None:  # float32 is for parity runs: qwen-tts' encode, shape for shape
            fast = self.device.type == "cuda" and self.model.dtype != torch.float32
            mode = "graphed" if fast else "exact"
        if mode not in ("exact", "padded", "graphed"):
            raise ValueError(f"mode must be 'exact', 'padded' or 'graphed', got {mode!r}")
        if mode == "graphed" and self.device.type != "cuda":
            raise ValueError(f"mode 'graphed' needs a CUDA tokenizer, this one is on {self.device}")
        self.mode: Mode = mode
        self.downsample = int(self.model.encode_downsample_rate)
        self.books = int(self.model.encoder_valid_num_quantizers)
        self._encoder = self.model.encoder  # MimiModel without its decoder
        self._convs = [
            self._encoder.encoder.get_submodule(name)
            for name in self._encoder.encoder._mimiconv1d_layer_names
        ] + [self._encoder.downsample]
        modes = {conv.pad_mode for conv in self._convs}
        if mode != "exact" and not modes <= {"constant", "replicate"}:
            raise ValueError(
                f"the codec encoder pads with {sorted(modes)}; only 'constant' and 'replicate' "
                "can be masked: use mode='exact'"
            )
        if mode != "exact" and not all(conv.causal for conv in self._convs):
            raise ValueError("the codec encoder's convs are not causal: use mode='exact'")
        # Mimi's convs keep stride, kernel size and padding as device tensors and read them
        # back with .item() in every forward: a host sync, which a graph capture forbids.
        self._sizes = [_ConvSizes.of(conv) for conv in self._convs]
        self._forwards = [
            _sync_free_forward(conv, sizes)
            for conv, sizes in zip(self._convs, self._sizes, strict=True)
        ]
        self._lengths: torch.Tensor | None = None  # per conv: its input's unpadded length
        self._thread: int | None = None  # the thread of the run the hooks mask
        self._hooks = [
            conv.register_forward_pre_hook(self._make_mask_hook(i))
            for i, conv in enumerate(self._convs)
        ]
        self._graphs: dict[int, _BucketGraph | None] = {}  # None: capture failed
        self._lock = threading.Lock()
        self.captures = 0
        self.eager_runs = 0

    def close(self) -> None:
        """Remove the hooks and drop the graphs (the model is the caller's)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._graphs.clear()

    # ---- public -------------------------------------------------------------------------
    def encode(self, wav: np.ndarray) -> torch.Tensor:
        return self.start(wav)()

    def start(self, wav: np.ndarray) -> Callable[[], torch.Tensor]:
        """Launch the encoding of 1-D float 24 kHz `wav`; call the result for the codes."""
        wav = np.ascontiguousarray(wav, dtype=np.float32).reshape(-1)
        if wav.size == 0:
            raise ValueError("reference audio is empty (0 samples)")
        if self.mode == "exact":
            codes = self._exact(wav)
            return lambda: codes
        n_frames = -(-wav.size // self.downsample)
        padded = bucket_samples(wav.size)
        with self._lock:
            graph = None
            if self.mode == "graphed" and padded <= MAX_GRAPHED_SAMPLES:
                graph = self._graph(padded)
            if graph is None:
                codes = self._padded_eager(wav, padded)[:n_frames]
                return lambda: codes
            # copied out on the stream before any later replay can overwrite the buffer
            out = graph.replay(wav, self._valid_lengths(wav.size))[:n_frames].clone()
            done = graph.done = torch.cuda.Event()
            done.record()

        def result() -> torch.Tensor:
            done.synchronize()
            return out

        return result

    def warm(self, seconds: float) -> None:
        """Capture the buckets of references up to `seconds` long (a server's start-up), so
        no first request of a new length pays a capture."""
        if self.mode != "graphed":
            return
        top = min(bucket_samples(int(seconds * SAMPLE_RATE)), MAX_GRAPHED_SAMPLES)
        with self._lock:
            for padded in range(BUCKET_SAMPLES, top + 1, BUCKET_SAMPLES):
                self._graph(padded)

    # ---- the three ways -----------------------------------------------------------------
    @torch.inference_mode()
    def _exact(self, wav: np.ndarray) -> torch.Tensor:
        return self.tokenizer.encode([wav], sr=SAMPLE_RATE).audio_codes[0]

    @torch.inference_mode()
    def _padded_eager(self, wav: np.ndarray, padded: int) -> torch.Tensor:
        self.eager_runs += 1
        x = torch.zeros((1, 1, padded), dtype=torch.float32)
        x[0, 0, : wav.size] = torch.from_numpy(wav)
        lengths = self._valid_lengths(wav.size).to(self.device)
        return self._run(x.to(self.device).to(self.model.dtype), lengths)

    def _run(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Codes (frames of the padded length, books) of padded input `x` (1, 1, L), each
        conv's input masked past `lengths`."""
        self._lengths, self._thread = lengths, threading.get_ident()
        for conv, forward in zip(self._convs, self._forwards, strict=True):
            conv.forward = forward  # an instance attribute: this run only
        try:
            out = self._encoder.encode(input_values=x, return_dict=True).audio_codes
        finally:
            self._lengths = None
            for conv in self._convs:
                conv.__dict__.pop("forward", None)
        return out[0, : self.books].transpose(0, 1)

    def _graph(self, padded: int) -> _BucketGraph | None:
        if padded not in self._graphs:
            try:
                self._graphs[padded] = _BucketGraph(self, padded)
                self.captures += 1
            except Exception as err:  # an op that cannot be captured: eager from now on
                log.warning("reference encoder: no CUDA graph for %d samples (%s)", padded, err)
                self._graphs[padded] = None
        return self._graphs[padded]

    # ---- masking ------------------------------------------------------------------------
    def _valid_lengths(self, n: int) -> torch.Tensor:
        """Each conv's input length in the unpadded run of an `n`-sample recording, in the
        order the convs run (the transformer between encoder and downsample keeps it)."""
        lengths = []
        for sizes in self._sizes:
            lengths.append(n)
            n = sizes.output_length(n)
        return torch.tensor(lengths, dtype=torch.int64)

    def _make_mask_hook(self, index: int):
        pad_mode = self._convs[index].pad_mode

        def hook(module, args):
            lengths = self._lengths
            if lengths is None or threading.get_ident() != self._thread:
                return None  # someone else's call (another thread's too): the model as it is
            x = args[0]
            positions = torch.arange(x.shape[-1], device=x.device)
            if pad_mode == "replicate":  # the downsample: its padding repeats the last sample
                x = x.index_select(-1, torch.minimum(positions, lengths[index] - 1))
            else:  # "constant": zeros
                x = x * (positions < lengths[index]).to(x.dtype)
            return (x, *args[1:])

        return hook


@dataclass(frozen=True)
class _ConvSizes:
    """A causal `MimiConv1d`'s sizes as Python ints (Mimi keeps them as device tensors and
    reads them back with .item() in every forward: a host sync, which a capture forbids)."""

    kernel: int  # effective, dilation included
    stride: int
    total: int  # kernel - stride: the causal left padding
    conv_padding: int
    conv_dilation: int
    conv_kernel: int

    @classmethod
    def of(cls, conv) -> _ConvSizes:
        c = conv.conv
        return cls(
            int(conv.kernel_size),
            int(conv.stride),
            int(conv.padding_total),
            c.padding[0],
            c.dilation[0],
            c.kernel_size[0],
        )

    def extra_padding(self, length: int) -> int:
        """Mimi's right padding to a whole number of strides."""
        frames = -(-(length - self.kernel + self.total) // self.stride)  # ceil(.. + 1) - 1
        return frames * self.stride + self.kernel - self.total - length

    def output_length(self, length: int) -> int:
        """`MimiConv1d._get_output_length`."""
        padded = length + self.total + self.extra_padding(length)
        span = self.conv_dilation * (self.conv_kernel - 1)
        return (padded + 2 * self.conv_padding - span - 1) // self.stride + 1


def _sync_free_forward(conv, sizes: _ConvSizes):
    """`MimiConv1d.forward` of a causal conv without a padding cache, with `sizes`: the same
    padding and the same conv, no device-to-host reads."""
    mode = conv.pad_mode

    def forward(hidden_states, padding_cache=None):
        if padding_cache is not None:
            raise ValueError("ReferenceCodes runs without a padding cache")
        extra = sizes.extra_padding(hidden_states.shape[-1])
        padded = torch.nn.functional.pad(hidden_states, (sizes.total, extra), mode, 0.0)
        return conv.conv(padded)

    return forward


class _BucketGraph:
    """One captured masked encode of a `padded`-sample input."""

    def __init__(self, owner: ReferenceCodes, padded: int):
        dev = owner.device
        self.padded = padded
        self.host = torch.zeros(padded, dtype=torch.float32, pin_memory=True)
        self.host_lengths = torch.zeros(len(owner._convs), dtype=torch.int64, pin_memory=True)
        self.x = torch.zeros((1, 1, padded), dtype=torch.float32, device=dev)
        self.lengths = torch.zeros(len(owner._convs), dtype=torch.int64, device=dev)
        self.lengths.copy_(owner._valid_lengths(padded))
        self.copied: torch.cuda.Event | None = None  # the last replay's host-to-device copies
        self.done: torch.cuda.Event | None = None  # the last replay's codes copied out
        stream = torch.cuda.Stream(dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):  # pick cuDNN algorithms, fill the caching allocator
                owner._run(self.x.to(owner.model.dtype), self.lengths)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=stream):
                self.codes = owner._run(self.x.to(owner.model.dtype), self.lengths)
        torch.cuda.current_stream(dev).wait_stream(stream)

    def replay(self, wav: np.ndarray, lengths: torch.Tensor) -> torch.Tensor:
        """Launch on the current stream; the returned codes are valid once it has run."""
        if self.copied is not None:  # the pinned buffers are read by the last copies
            self.copied.synchronize()
        if self.done is not None:  # another thread's stream may still be replaying
            torch.cuda.current_stream().wait_event(self.done)
        self.host.zero_()
        self.host[: wav.size] = torch.from_numpy(wav)
        self.host_lengths.copy_(lengths)
        self.x.view(-1).copy_(self.host, non_blocking=True)
        self.lengths.copy_(self.host_lengths, non_blocking=True)
        self.copied = torch.cuda.Event()
        self.copied.record()
        self.graph.replay()
        return self.codes
