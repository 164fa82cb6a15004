"""`FastQwen3TTS`: the static-cache engine behind the `qwen_tts.Qwen3TTSModel` API.

Switching is one import: the `generate_*` methods take the same arguments and return
`(wavs, sample_rate)`. `generate(request, ...)` returns the richer `GenerationResult`
(codes, EOS, prefill and per-frame times), and `stream(...)` yields audio chunks.

The six `generate_<mode>` / `stream_<mode>` methods are built from one table (`_VOICES`):
they differ only in the voice arguments that make the `VoiceRequest`.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import logging
import numbers
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from fastqwen.codec.batch import CodecWorker, warm_batch_graphs, warm_stream_graphs
from fastqwen.codec.decoder import codec_decoder, receptive_field, utterance_audio
from fastqwen.config import EngineConfig, SamplingParams
from fastqwen.engine.model import StaticModel, kv_bytes_per_slot
from fastqwen.engine.runner import FrameRunner
from fastqwen.engine.scheduler import Scheduler
from fastqwen.engine.step import PREFILL_BUCKET
from fastqwen.handle import RequestHandle
from fastqwen.locking import serialized
from fastqwen.prompts.builder import VoiceRequest, build_talker_prompt
from fastqwen.prompts.reference_audio import load_reference_audio
from fastqwen.prompts.reference_codes import ReferenceCodes
from fastqwen.prompts.speaker import SAMPLE_RATE as SPEAKER_RATE
from fastqwen.prompts.speaker import speaker_embedding
from fastqwen.prompts.voice_cache import VoicePromptCache, file_identity, voice_key
from fastqwen.results import AudioChunk, GenerationResult

log = logging.getLogger(__name__)


# ---- the generate_<mode> / stream_<mode> methods, from one table ------------------------
def _arg(name: str, annotation: str, default: Any = inspect.Parameter.empty) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation
    )


class _Voice(NamedTuple):
    """How one mode's methods differ: their voice arguments, and the words for the docstring."""

    args: tuple[inspect.Parameter, ...]  # between `text` and `non_streaming_mode`
    doc: str


# Named and ordered as in qwen_tts.Qwen3TTSModel.generate_<mode>, so calls port unchanged.
_VOICES: dict[str, _Voice] = {
    "custom_voice": _Voice(
        (
            _arg("speaker", "str"),
            _arg("language", "str | None", None),
            _arg("instruct", "str | None", None),
        ),
        "in one of the model's speakers (`get_supported_speakers()`), optionally steered by "
        "`instruct`",
    ),
    "voice_design": _Voice(
        (_arg("instruct", "str"), _arg("language", "str | None", None)),
        "in a voice described by `instruct`",
    ),
    "voice_clone": _Voice(
        (
            _arg("language", "str | None", None),
            _arg("ref_audio", "str | np.ndarray | tuple[np.ndarray, int] | None", None),
            _arg("ref_text", "str | None", None),
            _arg("x_vector_only_mode", "bool", False),
            _arg("voice_clone_prompt", "list | None", None),
        ),
        "in the voice of `ref_audio` (ICL with `ref_text`, or `x_vector_only_mode`), or of a "
        "`voice_clone_prompt` from `create_voice_clone_prompt`",
    ),
}
_CLONE_INPUTS = ("voice_clone_prompt", "ref_audio", "ref_text", "x_vector_only_mode")
_COMMON_ARGS = (_arg("non_streaming_mode", "bool | None", None), _arg("seed", "int | None", None))
_STREAM_ARGS = (_arg("first_chunk_frames", "int", 2), _arg("chunk_frames", "int", 12))

_DOC = """{verb} `text` {voice}.

Takes the arguments of `qwen_tts.Qwen3TTSModel.generate_{mode}`, plus:

Args:
    seed: RNG seed, set right before the first draw, as the reference runner does
        (None: torch's current random state).{stream_args}
    **gen: generation parameters, the fields of `SamplingParams` (`max_new_tokens`,
        `temperature`, `top_k`, `subtalker_*`, ...); unknown names raise a ValueError.

{returns}
"""
_STREAM_DOC = """
    first_chunk_frames: frames in the first audio chunk (small, for early audio).
    chunk_frames: frames in each later chunk."""
_RETURNS = (
    "Returns:\n    `(wavs, sample_rate)`, one waveform per text; `last_results` has the details."
)
_YIELDS = "Yields:\n    `AudioChunk`s, as `stream()` does (one text at a time)."


SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.manual_seed accepts
# Lone prompts up to this many tokens get their prefill graph at warm-up: custom voice and
# design prompts of a few sentences, a clone's with a 10-20 s reference (12.5 codes a second).
WARM_PROMPT_TOKENS = 512


_open_engines: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_open_engines() -> None:
    """At interpreter exit, stop the threads of every engine not closed yet. A frame loop
    still inside a torch op while the interpreter tears torch down aborts the process
    ("terminate called without an active exception", exit status 134): that happened
    whenever a program ended right after dropping a stream mid-way."""
    for engine in list(_open_engines):
        try:
            engine.close()
        except Exception:  # noqa: BLE001 - exiting anyway; the others still get closed
            log.debug("closing an engine at exit failed", exc_info=True)


def warm_prompt_lengths(max_seq_len: int) -> list[int]:
    """The padded prompt lengths `FastQwen3TTS.warmup` captures a prefill graph for: every
    multiple of `PREFILL_BUCKET` up to `WARM_PROMPT_TOKENS`, and at most half the cache (a
    prompt leaves room for its frames)."""
    top = min(WARM_PROMPT_TOKENS, max_seq_len // 2)
    return list(range(PREFILL_BUCKET, top + 1, PREFILL_BUCKET))


def _check_seed(seed: Any) -> None:
    """A seed torch can use, or None (an error naming the range instead of torch's)."""
    lo, hi = SEED_RANGE
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not lo <= seed <= hi
    ):
        raise ValueError(f"seed must be None or an integer from {lo} to {hi}, got {seed!r}")


def resolve_seed(seed: int | None) -> int:
    """The request's seed; None draws one from torch's default CPU generator, so
    `torch.manual_seed` before a call still makes it repeatable."""
    _check_seed(seed)
    if seed is None:
        return int(torch.randint(0, 2**62, ()))
    return int(seed)


def _per_item(value: Any, n: int, name: str) -> list:
    """`value` for each of n texts: a list of n, a list of one (for all), or one value."""
    if isinstance(value, list):
        if len(value) == 1:
            return value * n
        if len(value) != n:
            raise ValueError(f"batch size mismatch: {n} texts but {len(value)} values of {name}")
        return value
    return [value] * n


def _check_texts(text: Any) -> None:
    """One text, or a non-empty list of texts (the reference's batch form)."""
    if isinstance(text, list) and (not text or not all(isinstance(t, str) for t in text)):
        raise ValueError(f"text must be a string or a non-empty list of strings, got {text!r}")


def _voice_method(mode: str, streaming: bool) -> Callable[..., Any]:
    """Build `generate_<mode>` or `stream_<mode>`, with its real signature and docstring."""
    name = f"{'stream' if streaming else 'generate'}_{mode}"
    signature = inspect.Signature(
        [
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            _arg("text", "str" if streaming else "str | list[str]"),
            *_VOICES[mode].args,
            *_COMMON_ARGS,
            *(_STREAM_ARGS if streaming else ()),
            inspect.Parameter("gen", inspect.Parameter.VAR_KEYWORD),
        ],
        return_annotation="Iterator[AudioChunk]" if streaming else "tuple[list[np.ndarray], int]",
    )

    def method(self: FastQwen3TTS, *args: Any, **kwargs: Any):
        bound = signature.bind(self, *args, **kwargs)  # a TypeError names a wrong argument
        bound.apply_defaults()
        args = dict(bound.arguments)
        del args["self"]
        return self._voice_call(mode, streaming, args)

    method.__name__ = name
    method.__qualname__ = f"FastQwen3TTS.{name}"
    method.__signature__ = signature
    method.__doc__ = _DOC.format(
        verb="Stream" if streaming else "Speak",
        voice=_VOICES[mode].doc,
        mode=mode,
        stream_args=_STREAM_DOC if streaming else "",
        returns=_YIELDS if streaming else _RETURNS,
    )
    return method


class FastQwen3TTS:
    """Static-cache Qwen3-TTS on the weights of a loaded `qwen_tts.Qwen3TTSModel`.

    Requests run in batches: a scheduler thread (`engine.scheduler.Scheduler`) owns the
    frame loop, and every call (`generate*`, `stream*`, `submit`) is a request in it, from
    any number of threads. Each request gets exactly the codes it would get alone, and
    with a seed the codes `qwen_tts` gives with that seed. The list form of the
    `generate_*` calls submits all its texts at once. `last_results` is the latest
    finished list call's or stream's, whichever thread made it; a thread wanting its own
    uses `generate()` or `submit()`.

    asyncio: `await engine.submit(...)` gives the `GenerationResult`, and `async for chunk
    in engine.submit(...)` streams it; the blocking calls also work through
    `asyncio.to_thread`.
    """

    def __init__(
        self, tts, config: EngineConfig | None = None, source=None, voice_cache_size: int = 32
    ):
        self.tts = tts
        self.config = config or EngineConfig()
        self.source = source
        self.kv_bytes_per_slot = kv_bytes_per_slot(tts.model, self.config.max_seq_len)
        _check_memory(tts.model, self.config, self.kv_bytes_per_slot)
        model = StaticModel.from_qwen_tts(
            tts.model, self.config.max_seq_len, batch=self.config.max_batch_size
        )
        self.runner = FrameRunner(model, self.config)  # state, graphs: how frames run
        self.scheduler = Scheduler(self.runner)  # the frame loop, in a thread of its own
        _open_engines.add(self)  # closed at exit if the caller did not
        # Every stream's chunks and every result's audio go through one codec thread,
        # which decodes what has queued up together (`codec.batch`).
        decoder = codec_decoder(self.tts.model.speech_tokenizer)
        # batch-invariant: each span alone, so audio too is bit-identical whatever the load
        self.codec = CodecWorker(
            decoder,
            max_spans=1 if self.config.batch_invariant else None,
            stream=self.config.codec_stream,
            loop_stream=self.scheduler.stream,
        )
        self._conv_context = receptive_field(decoder).conv_frames
        self.voice_cache = VoicePromptCache(voice_cache_size)  # clone prompts by content
        # ICL references' codes: qwen-tts' encoder, from a CUDA graph per length bucket
        self.reference_codes = (
            ReferenceCodes(self.tts.model.speech_tokenizer) if self.model_kind == "base" else None
        )
        self.last_results: list[GenerationResult] = []
        log.info(
            "engine: %d slots of %.1f MB of KV cache each (max_seq_len %d)",
            self.config.max_batch_size,
            self.kv_bytes_per_slot / 1e6,
            self.config.max_seq_len,
        )

    @classmethod
    def from_pretrained(
        cls,
        model: str,
        device: str = "cpu",
        dtype: str | torch.dtype | None = None,
        config: EngineConfig | None = None,
        warmup: bool = False,
    ) -> FastQwen3TTS:
        """Load a model string (HF id, directory, `random:<size>-<kind>`, `auto:<HF id>`).

        dtype defaults to float32 on CPU and bfloat16 on CUDA. `warmup=True` captures
        (and with `EngineConfig(compile=True)` compiles) every batch bucket before
        returning (`warmup()`).
        """
        from fastqwen.models.sources import load_model

        if dtype is None:
            dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
        loaded = load_model(model, device=device, dtype=dtype)
        engine = cls(loaded.tts, config=config, source=loaded.source)
        if warmup:
            engine.warmup()
        return engine

    def close(self) -> None:
        """Stop the scheduler thread (cancelling what is queued or running) and the codec's."""
        self.scheduler.close()
        self.codec.close()
        if self.reference_codes is not None:
            self.reference_codes.close()

    def warmup(
        self,
        buckets: tuple[int, ...] | None = None,
        frames: int = 4,
        reference_seconds: float = 12.0,
    ) -> dict[int, float]:
        """Compile and capture, before the first request, what a batch at each size needs.

        For each batch bucket b (default: all of `config.buckets`), b short requests at
        once, so the frame graph of that bucket (default sampling, shortest cache window)
        and the prefill graphs of the joining groups it makes (1, 2, 4, ... prompts) exist
        before any traffic; a server reports healthy after this. Then the prefill graph of
        a lone prompt at each padded length up to `WARM_PROMPT_TOKENS` (a request joining
        an idle engine is the one whose first audio a capture would hold up). Then, on
        CUDA, the codec graphs of a single stream's chunks (`codec.batch.warm_stream_graphs`)
        and of batches of streams' chunks up to `max_batch_size`
        (`codec.batch.warm_batch_graphs`), so that
        no chunk waits for a capture. Longer utterances (a longer cache window) and other
        sampling modes still capture on first use. A Base model also captures the reference
        encoder's graphs for references up to `reference_seconds` long (0: none), so a new
        voice's first request pays no capture. Returns the seconds each bucket took.
        """
        request = self.warmup_request()
        params = SamplingParams(max_new_tokens=frames + 1, min_new_tokens=frames + 1)
        took = {}
        for size in buckets or self.config.buckets:
            t0 = time.perf_counter()
            for handle in self.submit_many([request] * size, params, 0, streaming=False):
                handle.result()
            took[size] = time.perf_counter() - t0
            log.info("warm-up: batch %d in %.1f s", size, took[size])
        t0 = time.perf_counter()
        on_stream = (
            torch.cuda.stream(self.scheduler.stream)
            if self.scheduler.stream is not None
            else contextlib.nullcontext()
        )
        with self.scheduler.exclusive(), torch.inference_mode(), on_stream:
            prefills = self.runner.warm_prefills(warm_prompt_lengths(self.config.max_seq_len))
        if prefills:
            log.info("warm-up: %d prefill graphs in %.1f s", prefills, time.perf_counter() - t0)
        t0 = time.perf_counter()
        held = warm_stream_graphs(self.codec.decoder, decode=self.codec.decode)
        if self.config.max_batch_size > 1:
            held = warm_batch_graphs(
                self.codec.decoder, self.config.max_batch_size, decode=self.codec.decode
            )
        if held:
            log.info("warm-up: %d codec graphs in %.1f s", held, time.perf_counter() - t0)
        if self.reference_codes is not None and reference_seconds > 0:
            t0 = time.perf_counter()
            self.reference_codes.warm(reference_seconds)
            log.info(
                "warm-up: reference encoder graphs up to %.0f s in %.1f s",
                reference_seconds,
                time.perf_counter() - t0,
            )
        return took

    def warmup_request(self) -> VoiceRequest:
        """A short request this model can serve (a quiet tone stands in for a clone's
        reference: the warm-up needs the shapes, not a voice)."""
        text = "Warming up."
        if self.model_kind == "custom_voice":
            speaker = sorted(self.get_supported_speakers())[0]
            return VoiceRequest("custom_voice", text, speaker=speaker)
        if self.model_kind == "voice_design":
            return VoiceRequest("voice_design", text, instruct="A calm, clear voice.")
        sr = self.sample_rate
        tone = (0.1 * np.sin(2 * np.pi * 220 * np.arange(int(1.5 * sr)) / sr)).astype(np.float32)
        prompt = self.create_voice_clone_prompt((tone, sr), text)
        return VoiceRequest("voice_clone", text, voice_clone_prompt=prompt)

    # ---- properties mirroring the reference -------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.runner.device

    @property
    def model_kind(self) -> str:
        return self.tts.model.tts_model_type

    @property
    def sample_rate(self) -> int:
        return int(self.tts.model.speech_tokenizer.get_output_sample_rate())

    def get_supported_speakers(self) -> list[str] | None:
        return self.tts.get_supported_speakers()

    def get_supported_languages(self) -> list[str] | None:
        return self.tts.get_supported_languages()

    # ---- the rich API --------------------------------------------------------------
    @torch.inference_mode()
    def submit(
        self,
        request: VoiceRequest,
        params: SamplingParams | None = None,
        seed: int | None = None,
        *,
        first_chunk_frames: int = 2,
        chunk_frames: int = 12,
        stop: threading.Event | None = None,
        streaming: bool = True,
    ) -> RequestHandle:
        """Queue one utterance and return its handle at once: iterate it for audio chunks,
        `result()` or `await` it for the `GenerationResult`, or `cancel()` it.

        Bad input (unknown speaker or language, empty text, too long for a slot) raises a
        ValueError here, naming the value; it never reaches the other requests.
        `streaming=False` runs it in blocks of `sync_every` frames from the start, for a
        caller that only wants the result.
        """
        return self.submit_many(
            [request],
            params,
            seed,
            first_chunk_frames=first_chunk_frames,
            chunk_frames=chunk_frames,
            stop=stop,
            streaming=streaming,
        )[0]

    @torch.inference_mode()
    def submit_many(
        self,
        requests: list[VoiceRequest],
        params: SamplingParams | list[SamplingParams] | None = None,
        seeds: int | None | list[int | None] = None,
        *,
        first_chunk_frames: int = 2,
        chunk_frames: int = 12,
        stop: threading.Event | None = None,
        streaming: bool = True,
    ) -> list[RequestHandle]:
        """`submit` for several requests that join the batch at the same frame (one prompt
        group). `params` and `seeds` are one for all, or one per request. Nothing is queued
        if any request is bad."""
        n = len(requests)
        all_params = _per_item(params, n, "params")
        all_seeds = [resolve_seed(s) for s in _per_item(seeds, n, "seeds")]
        first = first_chunk_frames if streaming else None
        prompts, jobs = [], []
        for request, p, seed in zip(requests, all_params, all_seeds, strict=True):
            prompts.append(build_talker_prompt(self.tts, request))
            job = self.scheduler.job(prompts[-1], p or SamplingParams(), seed, first, stop)
            jobs.append(job)
        self.scheduler.submit_many(jobs)
        return [
            RequestHandle(
                self, job, prompt, first_chunk_frames=first_chunk_frames, chunk_frames=chunk_frames
            )
            for job, prompt in zip(jobs, prompts, strict=True)
        ]

    def generate(
        self,
        request: VoiceRequest,
        params: SamplingParams | None = None,
        seed: int | None = None,
        *,
        stop: threading.Event | None = None,
    ) -> GenerationResult:
        """One utterance; the same request, params and seed as the reference give the same codes.

        `stop`: setting this event from another thread (a Stop button) ends the generation
        within one block of frames by raising `GenerationStopped`.
        """
        return self.submit(request, params, seed, stop=stop, streaming=False).result()

    def stream(
        self,
        request: VoiceRequest,
        params: SamplingParams | None = None,
        seed: int | None = None,
        *,
        first_chunk_frames: int = 2,
        chunk_frames: int = 12,
        stop: threading.Event | None = None,
    ) -> Iterator[AudioChunk]:
        """Yield audio as it is generated: a small first chunk, then `chunk_frames` at a time.

        The codec decodes each chunk with left context, so the concatenated chunks equal
        the non-streamed audio (up to float rounding). Closing the stream early cancels
        the request. The whole stream's result lands in `last_results`.
        """
        handle = self.submit(
            request,
            params,
            seed,
            first_chunk_frames=first_chunk_frames,
            chunk_frames=chunk_frames,
            stop=stop,
        )
        return self._stream(handle)

    def _stream(self, handle: RequestHandle) -> Iterator[AudioChunk]:
        yield from handle
        self.last_results = [handle.result()]

    def _decode_utterance(
        self, codes: torch.Tensor, ref_codes: torch.Tensor | None
    ) -> tuple[np.ndarray, int]:
        audio = utterance_audio(codes, ref_codes, self._conv_context, self.codec.decode)
        return audio, self.sample_rate

    # ---- qwen_tts-compatible API -----------------------------------------------------
    def create_voice_clone_prompt(
        self, ref_audio, ref_text: str | None = None, x_vector_only_mode: bool = False
    ) -> list:
        """Reusable voice-clone prompt; the reference audio is checked, mixed to mono,
        resampled. The last `voice_cache_size` prompts are kept by content
        (`prompts.voice_cache`): the same recording and text again costs no encoding, and
        the same unchanged file again is not even read."""
        if self.model_kind != "base":
            raise ValueError(
                f"voice cloning needs a 'base' model, but this model is {self.model_kind!r}; "
                "load a *-Base checkpoint (or random:<size>-base)"
            )
        if not x_vector_only_mode and not (ref_text or "").strip():
            raise ValueError(
                "ref_text is required for ICL voice cloning; "
                "pass ref_text or x_vector_only_mode=True"
            )
        # an unchanged file seen before: its content key without reading it again
        file = None
        if isinstance(ref_audio, (str, Path)) and (identity := file_identity(ref_audio)):
            file = (identity, ref_text or "", bool(x_vector_only_mode))
            key = self.voice_cache.key_of_file(file)
            items = self.voice_cache.get(key) if key is not None else None
            if items is not None:
                return list(items)
        # keyed on the recording as given: a reference used again skips the resampling too
        raw, raw_sr = load_reference_audio(ref_audio, target_sr=None)
        key = voice_key(raw, raw_sr, ref_text, x_vector_only_mode)
        items = self.voice_cache.get(key)
        if items is None:
            wav, sr = load_reference_audio((raw, raw_sr))
            items = self._encode_voice(wav, sr, ref_text, x_vector_only_mode)
            self.voice_cache.put(key, items)
        if file is not None:
            self.voice_cache.remember_file(file, key)
        return list(items)

    @serialized  # runs the speaker encoder and the codec's encoder
    def _encode_voice(self, wav, sr: int, ref_text, x_vector_only_mode: bool) -> list:
        """What `Qwen3TTSModel.create_voice_clone_prompt` makes, sooner: ICL launches the
        codec's encoder (one graph replay on CUDA, `prompts.reference_codes`) and computes
        the speaker embedding while it runs (its mel spectrogram is host work); x-vector
        runs no codec encoder at all."""
        if x_vector_only_mode:
            return [self._speaker_only_item(wav, sr, ref_text)]
        from qwen_tts.inference.qwen3_tts_model import VoiceClonePromptItem

        ((wav, sr),) = self.tts._normalize_audio_inputs([(wav, sr)])
        codes = self._reference_codes(wav, sr)
        speaker = self._speaker_only_item(wav, sr, ref_text)
        ref_code = codes()
        return [
            VoiceClonePromptItem(
                ref_code=ref_code,
                ref_spk_embedding=speaker.ref_spk_embedding,
                x_vector_only_mode=False,
                icl_mode=True,
                ref_text=ref_text,
            )
        ]

    def _reference_codes(self, wav, sr: int) -> Callable[[], torch.Tensor]:
        """Launch the reference's encoding; the returned function waits for its codec codes
        (T, 16), the codes qwen-tts' `speech_tokenizer.encode` gives."""
        if sr != self.sample_rate:  # load_reference_audio resamples; a caller's array may not
            import librosa

            wav = librosa.resample(y=wav, orig_sr=int(sr), target_sr=self.sample_rate)
        return self.reference_codes.start(wav)

    @torch.inference_mode()
    def _speaker_only_item(self, wav, sr: int, ref_text):
        """An x-vector prompt item, made as `Qwen3TTSModel.create_voice_clone_prompt` makes it
        (the same normalisation, resampling and speaker encoder) but without running the
        codec's encoder: qwen-tts 0.1.1 encodes the reference there in every mode and then
        drops the codes when `x_vector_only_mode` is set, which is most of a new x-vector
        reference's time to first audio."""
        from qwen_tts.inference.qwen3_tts_model import VoiceClonePromptItem

        ((wav, sr),) = self.tts._normalize_audio_inputs([(wav, sr)])
        model = self.tts.model
        target = model.speaker_encoder_sample_rate
        if sr != target:
            import librosa  # slow to import; load_reference_audio has resampled already

            wav = librosa.resample(y=wav.astype(np.float32), orig_sr=int(sr), target_sr=target)
        if target == SPEAKER_RATE:  # extract_speaker_embedding's, without its set-up
            embedding = speaker_embedding(model, wav)
        else:  # pragma: no cover - every Qwen3-TTS Base model so far is 24 kHz
            embedding = model.extract_speaker_embedding(audio=wav, sr=target)
        return VoiceClonePromptItem(
            ref_code=None,
            ref_spk_embedding=embedding,
            x_vector_only_mode=True,
            icl_mode=False,
            ref_text=ref_text,
        )

    def _clone_items(self, voice_clone_prompt, ref_audio, ref_text, x_vector_only_mode) -> list:
        """One prompt item per text: the given items, or made from each reference (a
        reference used again comes from `voice_cache`)."""
        if voice_clone_prompt is not None:
            return list(voice_clone_prompt)
        if ref_audio is None or (isinstance(ref_audio, list) and not ref_audio):
            raise ValueError("pass ref_audio (with ref_text for ICL) or a voice_clone_prompt")
        refs = ref_audio if isinstance(ref_audio, list) else [ref_audio]
        n = len(refs)
        texts = _per_item(ref_text, n, "ref_text")
        xvec = _per_item(x_vector_only_mode, n, "x_vector_only_mode")
        return [
            self.create_voice_clone_prompt(ref, text, bool(only))[0]
            for ref, text, only in zip(refs, texts, xvec, strict=True)
        ]

    def _run_many(self, requests: list[VoiceRequest], gen: dict, seed: int | None):
        """Submit every request at once, so they run as one batch, each with `seed`
        (the reference's list calls give every text the same seed too)."""
        params = SamplingParams.from_kwargs(**gen)
        handles = self.submit_many(requests, params, resolve_seed(seed), streaming=False)
        try:
            # One reader per request, so utterances that end together share codec batches.
            with ThreadPoolExecutor(max_workers=min(len(handles), 64)) as pool:
                results = list(pool.map(lambda h: h.result(), handles))
        except BaseException:
            for h in handles:
                h.cancel()
            raise
        self.last_results = results
        return [r.audio for r in results], results[0].sample_rate

    def _voice_call(self, mode: str, streaming: bool, args: dict[str, Any]):
        """The body of every `generate_<mode>` / `stream_<mode>`, given its bound arguments.

        As in `qwen_tts`, `text` may be a list, and so may each voice argument (one per
        text, or one for all).
        """
        gen, text, seed = args.pop("gen"), args.pop("text"), args.pop("seed")
        _check_texts(text)
        _check_seed(seed)
        chunking = {p.name: args.pop(p.name) for p in _STREAM_ARGS if p.name in args}
        texts = text if isinstance(text, list) else [text]
        lists = [k for k, v in args.items() if isinstance(v, list) and k != "voice_clone_prompt"]
        if streaming and lists:
            raise ValueError(
                f"stream_* calls take one text and one voice, got a list for {lists[0]}; "
                "use generate_* for lists"
            )
        n = len(texts)
        if mode == "voice_clone":  # the clone inputs become each request's prompt item
            clone = {k: args.pop(k) for k in _CLONE_INPUTS}
            items = _per_item(self._clone_items(**clone), n, "voice_clone_prompt")
            args["voice_clone_prompt"] = [[item] for item in items]
        per_text = {k: _per_item(v, n, k) for k, v in args.items()}
        languages = per_text.pop("language")
        requests = [
            VoiceRequest(mode, t, languages[i] or "auto", **{k: v[i] for k, v in per_text.items()})
            for i, t in enumerate(texts)
        ]
        if streaming:
            return self.stream(requests[0], SamplingParams.from_kwargs(**gen), seed, **chunking)
        return self._run_many(requests, gen, seed)

    generate_custom_voice = _voice_method("custom_voice", streaming=False)
    generate_voice_design = _voice_method("voice_design", streaming=False)
    generate_voice_clone = _voice_method("voice_clone", streaming=False)

    # ---- streaming, with the generate_* arguments (one text at a time) ------------------
    stream_custom_voice = _voice_method("custom_voice", streaming=True)
    stream_voice_design = _voice_method("voice_design", streaming=True)
    stream_voice_clone = _voice_method("voice_clone", streaming=True)


MEMORY_HEADROOM = 0.9  # the share of free GPU memory the caches may take


def _check_memory(model, config: EngineConfig, per_slot: int) -> None:
    """Raise before allocating if the caches cannot fit the device's free memory, naming
    the sizes and the settings that change them."""
    device = model.talker.codec_head.weight.device
    if device.type != "cuda":
        return
    scratch = min(config.max_prefill_batch, config.max_batch_size)  # the prefill's rows
    slots = config.max_batch_size + scratch
    needed = slots * per_slot
    free, _ = torch.cuda.mem_get_info(device)
    if needed > MEMORY_HEADROOM * free:
        raise ValueError(
            f"the KV caches need {needed / 2**30:.1f} GiB ({slots} slots x "
            f"{per_slot / 2**20:.0f} MiB at max_seq_len={config.max_seq_len}), but only "
            f"{free / 2**30:.1f} GiB of {device} is free; lower EngineConfig.max_batch_size "
            "or max_seq_len"
        )
