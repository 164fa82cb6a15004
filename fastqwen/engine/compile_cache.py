"""Where compiled kernels are kept between processes.

A fresh process compiles the frame functions again unless Inductor and Triton find their
earlier work on disk. Both keep on-disk caches keyed by everything the code depends on
(the traced graph, input shapes and dtypes, the torch and Triton versions, the device)
and check an entry's key on load, so an entry made for other dims, another dtype or
another GPU is never used. A graph entry that does not load (truncated, overwritten) is
skipped and compiled again. The kernel files the entries point to (`<dir>/xx/*.so` and
`*.py`) are not checked: a damaged one fails the process that loads it, and every later
one, until it is removed. Inductor's C++ build writes its `.so` in place, so a CPU compile
killed mid-build can leave one; remove the directory then.

By default the caches live under /tmp, which containers, CI and autoscaled replicas start
without; the engine points them into `$FASTQWEN_CACHE/compile/` (unless
`TORCHINDUCTOR_CACHE_DIR` is already set), beside the checkpoints, so one directory holds
what a warm start needs and can be baked into an image (`fastqwen warmup`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fastqwen.models.sources import cache_dir

log = logging.getLogger(__name__)

ENV = "TORCHINDUCTOR_CACHE_DIR"  # Inductor keeps the Triton kernels it compiles under it
TRITON_ENV = "TRITON_CACHE_DIR"  # where Triton keeps every kernel it compiles


def _inductor_default() -> str | None:
    """The directory Inductor picks (and writes into `$TORCHINDUCTOR_CACHE_DIR`) when the
    user set none: a value equal to it is Inductor's, not the user's."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # pragma: no cover - another torch layout
        return None
    return default_cache_dir()


def compile_cache_dir() -> Path:
    """`$TORCHINDUCTOR_CACHE_DIR` if the user set it, else `$FASTQWEN_CACHE/compile`."""
    chosen = os.environ.get(ENV)
    if chosen and chosen != _inductor_default():
        return Path(chosen)
    return cache_dir() / "compile"


def use_compile_cache() -> Path:
    """Point Inductor's and Triton's on-disk caches at `compile_cache_dir()` (Triton's at its
    `triton/` unless `$TRITON_CACHE_DIR` is set); call it before the first compile or
    kernel launch. Returns the directory.

    Triton's own cache matters without Inductor too: the hand-written kernels (the frames'
    with compile off, the codec's) are compiled by Triton at their first launch, about a
    second each, and otherwise kept in ~/.triton."""
    path = compile_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    if os.environ.get(ENV) != str(path):
        os.environ[ENV] = str(path)
        log.info("compiled kernels are cached in %s", path)
    os.environ.setdefault(TRITON_ENV, str(path / "triton"))
    return path
