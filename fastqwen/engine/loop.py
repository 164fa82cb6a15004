"""The generation loop: prefill, then frame steps, yielding blocks of codes.

This is the only loop. Non-streaming generation collects its blocks; streaming feeds
them to the codec as they come. The host looks at the codes only between blocks of
`sync_every` frames: EOS is found there and any overshoot past it trimmed, and an optional
`stop` event is checked there (a set event raises `GenerationStopped`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from fastqwen.config import SamplingParams
from fastqwen.device import synchronize
from fastqwen.engine.model import StaticModel
from fastqwen.engine.sampling import SamplingTensors, apply_penalties, sample_token
from fastqwen.engine.step import FrameState, talker_logits
from fastqwen.prompts.builder import TalkerPrompt
from fastqwen.results import GenerationStopped


@dataclass
class LoopStats:
    """Filled in while the loop runs; read after it ends."""

    eos_reached: bool = False
    frames: int = 0
    prefill_s: float = 0.0
    block_times_s: list[float] = field(default_factory=list)  # wall time per yielded block
    block_frames: list[int] = field(default_factory=list)


def check_fits(prompt_len: int, params: SamplingParams, max_seq_len: int) -> int:
    """Frames this call may produce; raises if prompt + frames overflow the static cache."""
    max_frames = params.max_new_tokens - 1
    if prompt_len + max_frames > max_seq_len:
        raise ValueError(
            f"prompt ({prompt_len} positions) + max_new_tokens ({params.max_new_tokens}) needs "
            f"{prompt_len + max_frames} cache positions but max_seq_len is {max_seq_len}; "
            f"lower max_new_tokens to {max_seq_len - prompt_len + 1} "
            "or load the engine with a larger max_seq_len"
        )
    return max_frames


def trim_at_eos(codes: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, bool]:
    """(T, 16) codes cut before the first frame whose codebook 0 is EOS (as the reference
    post-processes its output), and whether there was one."""
    is_eos = codes[:, 0] == eos_id
    if not bool(is_eos.any()):
        return codes, False
    return codes[: int(is_eos.int().argmax())], True


def run_frames(
    m: StaticModel,
    state: FrameState,
    prompt: TalkerPrompt,
    params: SamplingParams,
    seed: int | None,
    *,
    step: Callable[[], None],
    prefill: Callable[[torch.Tensor], None],
    max_frames: int,
    sync_every: int,
    first_block: int | None = None,
    stats: LoopStats | None = None,
    stop: threading.Event | None = None,
) -> Iterator[torch.Tensor]:
    """Yield (k, 16) int64 CPU code blocks until EOS or `max_frames` (`check_fits`).

    Args:
        m: the model on the cache window `step` and `prefill` run on.
        seed: seeds torch right before prefill, as the reference runner does.
        step: advances one frame in place (an eager or compiled `frame_step`, or a CUDA
            graph replay); the sampling tensors it reads must already hold `params`.
        prefill: runs the (1, P, H) prompt embeddings (eagerly, or as a graph replay).
        sync_every: frames per block, i.e. between host looks at the codes.
        first_block: size of the first block (streaming wants its first audio early).
        stop: when set, the loop raises `GenerationStopped` before its next block.
    """
    stats = stats if stats is not None else LoopStats()
    state.reset(
        prompt.prompt_len, prompt.trailing_text.to(m.dtype), prompt.tts_pad_embed.to(m.dtype)
    )
    if seed is not None:
        torch.manual_seed(seed)
    t0 = time.perf_counter()
    prefill(prompt.inputs_embeds)
    synchronize(m.device)
    stats.prefill_s = time.perf_counter() - t0

    done = 0
    while done < max_frames:
        if stop is not None and stop.is_set():
            raise GenerationStopped(done)
        t_block = time.perf_counter()
        n = min(first_block if (done == 0 and first_block) else sync_every, max_frames - done)
        for _ in range(n):
            step()
        block = state.codes[done : done + n].to("cpu")  # the one host sync per block
        block, stats.eos_reached = trim_at_eos(block, m.eos_id)
        stats.block_times_s.append(time.perf_counter() - t_block)
        stats.block_frames.append(int(block.shape[0]))
        stats.frames += int(block.shape[0])
        done += n
        if block.shape[0]:
            yield block
        if stats.eos_reached:
            return
    stats.eos_reached = bool(final_token_is_eos(m, state, params))


def final_token_is_eos(m: StaticModel, state: FrameState, params: SamplingParams) -> bool:
    """The reference samples one more codebook-0 token after the last full frame; do the same
    so `eos_reached` (and the RNG stream) agree when generation ends exactly at the limit."""

    s = SamplingTensors(m.device).load_talker(params)
    scores = apply_penalties(
        talker_logits(m, state.hidden),
        s,
        presence=state.presence,
        blocked=m.suppress_mask,
        eos_id=m.eos_id,
        step=state.step,
    )
    return int(sample_token(scores, s, params.do_sample)) == m.eos_id
