"""What the generation loop (`scheduler.Scheduler`) keeps per request and checks.

The host looks at the codes only between blocks of `sync_every` frames: EOS is found
there and any overshoot past it trimmed (`trim_at_eos`), and cancellation is checked there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fastqwen.config import SamplingParams


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


def first_eos(codes: torch.Tensor, eos_id: int) -> list[int]:
    """For each row of a block (rows, n, 16): the index of its first frame whose codebook 0
    is EOS, or n when there is none. One pass over every row: the loop checks a whole
    batch's block at once instead of a request at a time."""
    is_eos = codes[:, :, 0] == eos_id  # (rows, n)
    n = codes.shape[1]
    return torch.where(is_eos.any(1), is_eos.int().argmax(1), n).tolist()
