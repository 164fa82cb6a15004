"""The demo request every tool starts from: the seed prompts, talker steps, seed, bench runs.

The sample sets, the benchmark (ours and the anchor's script), the notebooks and the GPU
checks use these unless told otherwise; every other generation setting is the
`SamplingParams` default. Imports only `fastqwen.config` (a dataclass module):
`bench/anchor_bench.py` imports this beside transformers 5.
"""

from __future__ import annotations

import re

from fastqwen.config import SamplingParams

SEED_PROMPTS = (
    "We met at the corner cafe after work and talked about weekend plans. The street was "
    "quiet, the lights were warm, and the time passed quickly. We stayed a bit longer.",
    "On Tuesday morning I missed the bus, so I walked home through the park. I took the long "
    "path and listened to the wind in the trees before heading back. I took my time.",
)
BENCH_SPEAKERS = ("aiden", "serena")  # English speakers the batch bench cycles through
DEMO_MAX_NEW_TOKENS = 168  # 167 frames, 13.4 s: room for the seed prompts to finish
DEFAULT_SEED = 1337
BENCH_RUNS = 3  # timed warm runs per engine, after one warm-up run


def demo_sampling(**overrides) -> SamplingParams:
    """`SamplingParams` with the demo's `max_new_tokens`; None overrides are ignored."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return SamplingParams.from_kwargs(**{"max_new_tokens": DEMO_MAX_NEW_TOKENS, **given})


__all__ = [
    "BENCH_RUNS",
    "BENCH_SPEAKERS",
    "DEFAULT_SEED",
    "DEMO_MAX_NEW_TOKENS",
    "SEED_PROMPTS",
    "demo_sampling",
]


FRAMES_PER_WORD = 12  # about 1 s of audio per word: generous for any speaking rate
FRAMES_MARGIN = 25  # plus 2 s, for pauses and very short sentences
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


def token_cap(text: str, limit: int) -> int:
    """max_new_tokens for a text nobody gave one for: ~FRAMES_PER_WORD per word (a CJK
    character counts as a word) plus a margin, never above `limit`. Random weights, or a
    real model that misses its EOS, then stop after seconds, not minutes; and a short text
    runs on a short cache window, which a batch's every frame reads."""
    words = len(_CJK.sub(" ", text).split()) + len(_CJK.findall(text))
    return max(2, min(limit, FRAMES_PER_WORD * words + FRAMES_MARGIN))
