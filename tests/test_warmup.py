"""`fastqwen warmup` fills the on-disk compile cache, and a second process starts from it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fastqwen.engine.compile_cache import compile_cache_dir, use_compile_cache

WARMUP = ("--model", "random:tiny-custom_voice", "--device", "cpu", "--compile",
          "--max-batch-size", "2", "--json")  # fmt: skip
ONE_BUCKET = ("--max-batch-size", "1")  # batch 1 only: about 2/3 of a cold compile's time


def run_warmup(env: dict, *args: str) -> tuple[dict, str]:
    """`fastqwen warmup` with WARMUP's options, then `args` (a later option wins); returns
    its JSON report and its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "fastqwen", "warmup", *WARMUP, *args],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def warmup(env: dict, *args: str) -> dict:
    return run_warmup(env, *args)[0]


def cache_env(root: Path, fastqwen_cache: Path) -> dict:
    """An environment whose FASTQWEN_CACHE is `root`, with the session's built checkpoints."""
    (root / "random").symlink_to(Path(fastqwen_cache) / "random")
    env = {**os.environ, "FASTQWEN_CACHE": str(root)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    return env


@pytest.mark.slow
def test_a_second_process_compiles_nothing(tmp_path, fastqwen_cache, tiny_model):
    tiny_model("custom_voice")  # built once, in the session cache
    env = cache_env(tmp_path, fastqwen_cache)
    first = warmup(env)
    assert first["compile_cache"] == str(tmp_path / "compile")
    assert first["bucket_s"].keys() == {"1", "2"}
    assert first["fx_graph_cache_misses"] > 0, first  # compiled here, for the first time
    assert any((tmp_path / "compile").rglob("*")), "nothing was written to the cache"
    second = warmup(env)
    assert second["fx_graph_cache_misses"] == 0, second
    assert second["fx_graph_cache_hits"] >= first["fx_graph_cache_misses"], second


@pytest.fixture(scope="module")
def filled_cache(tmp_path_factory, fastqwen_cache, tiny_model) -> tuple[Path, dict]:
    """A compile dir filled by a float32 batch-1 warm-up of the tiny custom-voice model, and
    that warm-up's report. Tests work on copies: one cold compile serves them all."""
    tiny_model("custom_voice")  # built once, in the session cache
    root = tmp_path_factory.mktemp("filled")
    report = warmup(cache_env(root, fastqwen_cache), *ONE_BUCKET)
    assert report["fx_graph_cache_misses"] > 0, report
    return root / "compile", report


def copy_filled_cache(filled: Path, root: Path, fastqwen_cache: Path) -> dict:
    """`filled` copied to `root`/compile; returns the environment that uses it."""
    env = cache_env(root, fastqwen_cache)
    shutil.copytree(filled, root / "compile", symlinks=True)
    return env


def build_wider_checkpoint(out: Path, monkeypatch) -> Path:
    """The tiny custom-voice checkpoint with another talker MLP width (192 -> 128)."""
    from fastqwen.models import checkpoints

    talker = dict(checkpoints._TALKER["tiny"], intermediate_size=128)
    monkeypatch.setitem(checkpoints._TALKER, "tiny", talker)
    return checkpoints.build_random_checkpoint("tiny", "custom_voice", out)


@pytest.mark.slow
def test_other_dims_or_another_dtype_compile_afresh(
    tmp_path, filled_cache, fastqwen_cache, monkeypatch
):
    """Inductor's FX graph cache key covers the graph and its inputs' shapes and dtypes (the
    weights are inputs), so in a cache filled for float32 at the tiny dims, the same model
    in bfloat16 finds none of its graphs (12 misses on the day this was written) and a
    model with a wider talker MLP misses those that hold the MLP (4 of 12; the rest are
    the same graphs). The new entries go beside the old: the float32 warm-up still hits
    them all afterwards. It runs on a copy of the filled cache in another directory, so it
    also shows that a moved cache (one baked into an image) still gives a warm start."""
    filled, first = filled_cache
    env = copy_filled_cache(filled, tmp_path, fastqwen_cache)
    wider = build_wider_checkpoint(tmp_path / "wider", monkeypatch)
    bf16 = warmup(env, *ONE_BUCKET, "--dtype", "bfloat16")
    assert bf16["fx_graph_cache_misses"] > 0, bf16
    other_dims = warmup(env, *ONE_BUCKET, "--model", str(wider))
    assert other_dims["fx_graph_cache_misses"] > 0, other_dims
    again = warmup(env, *ONE_BUCKET)
    assert again["fx_graph_cache_misses"] == 0, again
    assert again["fx_graph_cache_hits"] >= first["fx_graph_cache_misses"], again


def corrupt(path: Path, i: int) -> None:
    """Truncate the file to half (as an interrupted write would) or, every other one,
    overwrite it with bytes that are no pickle."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if i % 2 else b"\xff" * len(data))


@pytest.mark.slow
def test_corrupt_entries_are_compiled_again_not_used(tmp_path, filled_cache, fastqwen_cache):
    """Every FX graph (`fxgraph/`) and AOTAutograd (`aotautograd/`) entry is corrupted. In
    torch 2.11 both caches read an entry in `GuardedCache.iterate_over_candidates`
    (torch/_inductor/codecache.py), which unpickles each file of the key's directory
    inside `try`/`except Exception`: an entry that does not unpickle is logged ("fx graph
    cache unable to load compiled graph") and skipped, so the lookup misses and the graph
    is compiled again. The new entry is written under the hash of its own bytes, so as a
    rule beside the bad file, which stays and is skipped again on each later lookup. So the
    warm-up succeeds with misses and no hits, and the next one hits them all. (A damaged
    kernel file is another matter: see `fastqwen.engine.compile_cache`.)"""
    filled, first = filled_cache
    env = copy_filled_cache(filled, tmp_path, fastqwen_cache)
    entries = sorted(
        p for kind in ("fxgraph", "aotautograd") for p in (tmp_path / "compile" / kind).rglob("*")
        if p.is_file()
    )  # fmt: skip
    assert len(entries) >= 2, entries
    for i, path in enumerate(entries):
        corrupt(path, i)
    rebuilt, log = run_warmup(env, *ONE_BUCKET)
    assert "unable to load compiled graph" in log, log[-3000:]
    assert rebuilt["fx_graph_cache_hits"] == 0, rebuilt
    assert rebuilt["fx_graph_cache_misses"] >= first["fx_graph_cache_misses"], rebuilt
    again = warmup(env, *ONE_BUCKET)
    assert again["fx_graph_cache_misses"] == 0, again
    assert again["fx_graph_cache_hits"] >= first["fx_graph_cache_misses"], again


def test_the_cache_lives_under_fastqwen_cache_unless_the_user_chose(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTQWEN_CACHE", str(tmp_path))
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # Inductor's own pick
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    assert compile_cache_dir() == tmp_path / "compile"
    assert use_compile_cache() == tmp_path / "compile"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "compile")
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "compile" / "triton")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "my-triton"))  # the user's, kept
    use_compile_cache()
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "my-triton")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # the user's
    assert compile_cache_dir() == tmp_path / "mine"


def test_bad_buckets_are_named():
    done = subprocess.run(
        [sys.executable, "-m", "fastqwen", "warmup", "--model", "x", "--batch-buckets", "1,b"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (
        done.returncode == 2 and "--batch-buckets must be comma-separated integers" in done.stderr
    )


def test_warm_up_prefills_every_lone_prompt_length_up_to_half_the_cache():
    from fastqwen.api import WARM_PROMPT_TOKENS, warm_prompt_lengths

    assert warm_prompt_lengths(2560) == list(range(64, WARM_PROMPT_TOKENS + 1, 64))
    assert warm_prompt_lengths(256) == [64, 128]
    assert warm_prompt_lengths(100) == []
