"""`fastqwen warmup` fills the on-disk compile cache, and a second process starts from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastqwen.engine.compile_cache import compile_cache_dir, use_compile_cache


def warmup(env: dict) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "fastqwen", "warmup", "--model", "random:tiny-custom_voice",
         "--device", "cpu", "--compile", "--max-batch-size", "2", "--json"],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_second_process_compiles_nothing(tmp_path, fastqwen_cache, tiny_model):
    tiny_model("custom_voice")  # built once, in the session cache
    env = {**os.environ, "FASTQWEN_CACHE": str(tmp_path)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    (tmp_path / "random").symlink_to(Path(fastqwen_cache) / "random")  # the built checkpoints
    first = warmup(env)
    assert first["compile_cache"] == str(tmp_path / "compile")
    assert first["bucket_s"].keys() == {"1", "2"}
    assert first["fx_graph_cache_misses"] > 0, first  # compiled here, for the first time
    assert any((tmp_path / "compile").rglob("*")), "nothing was written to the cache"
    second = warmup(env)
    assert second["fx_graph_cache_misses"] == 0, second
    assert second["fx_graph_cache_hits"] >= first["fx_graph_cache_misses"], second


def test_the_cache_lives_under_fastqwen_cache_unless_the_user_chose(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTQWEN_CACHE", str(tmp_path))
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # Inductor's own pick
    assert compile_cache_dir() == tmp_path / "compile"
    assert use_compile_cache() == tmp_path / "compile"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "compile")
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
