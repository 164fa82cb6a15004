"""The demo request every tool starts from: the seed prompts, talker steps, seed, bench runs.

The sample sets, the benchmark (ours and the anchor's script), the notebooks and the GPU
checks use these unless told otherwise; every other generation setting is the
`SamplingParams` default. Imports only `fastqwen.config` (a dataclass module):
`bench/anchor_bench.py` imports this beside transformers 5.
"""

from __future__ import annotations

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
