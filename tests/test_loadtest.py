"""`fastqwen loadtest`: the arrival schedule, the playback model, the summary, errors by
kind (a mock transport), the shipped prompts from an installed copy, and a short run
against the real tiny server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")

from fastqwen.tools import cli, loadtest  # noqa: E402
from fastqwen.tools.loadtest import (  # noqa: E402
    LoadtestSettings,
    count_underruns,
    load_prompts,
    percentiles,
    poisson_schedule,
    run_loadtest,
    stalls,
)

ROOT = Path(__file__).resolve().parents[1]
SR = loadtest.SAMPLE_RATE


def test_poisson_schedule_is_seeded_with_mean_gap_one_over_rate():
    times = poisson_schedule(rate=10.0, horizon_s=2000.0, seed=3)
    gaps = np.diff([0.0, *times])
    assert len(times) == pytest.approx(20000, rel=0.03)
    assert gaps.mean() == pytest.approx(0.1, rel=0.03)
    # exponential gaps: the standard deviation equals the mean (a fixed gap would be 0)
    assert gaps.std() == pytest.approx(0.1, rel=0.05)
    assert all(0 <= t < 2000.0 for t in times) and times == sorted(times)
    assert poisson_schedule(10.0, 2000.0, seed=3) == times
    assert poisson_schedule(10.0, 2000.0, seed=4) != times
    assert len(poisson_schedule(10.0, 2000.0, seed=3, max_requests=7)) == 7


def _chunks(times: list[float], seconds: float) -> list[tuple[float, int]]:
    """Arrivals of equal chunks of `seconds` of audio at `times`: (time, samples so far)."""
    per = int(seconds * SR)
    return [(t, per * (i + 1)) for i, t in enumerate(times)]


def test_no_underrun_when_audio_arrives_faster_than_real_time():
    arrivals = _chunks([0.0, 0.1, 0.2, 0.3, 0.4], seconds=0.5)
    assert count_underruns(arrivals, first_sample=0) == (0, 0.0)


def test_one_gap_is_one_underrun_of_its_length():
    # 1.5 s of audio by t=0.2, played from t=0: it runs out at 1.5; the next chunk at 2.0
    arrivals = _chunks([0.0, 0.1, 0.2, 2.0, 2.1], seconds=0.5)
    events, stalled = count_underruns(arrivals, first_sample=0)
    assert events == 1 and stalled == pytest.approx(0.5)


def test_stalls_say_where_in_the_audio_each_underrun_fell():
    # 0.16 s first chunk, then the second one 0.3 s later: playback ran dry at 0.16 s; the
    # third chunk comes in time, the fourth 3 s late, after 2.3 s of audio
    arrivals = [(0.0, int(0.16 * SR)), (0.3, int(2.16 * SR)), (0.4, int(2.3 * SR))]
    arrivals.append((5.44, int(3.0 * SR)))
    found = stalls(arrivals, first_sample=0)
    assert [round(p, 3) for p, _ in found] == [0.16, 2.3]
    assert [round(s, 3) for _, s in found] == [0.14, 3.0]
    assert count_underruns(arrivals, first_sample=0) == (2, pytest.approx(3.14, abs=1e-3))
    assert stalls(_chunks([0.0, 0.1], seconds=0.5), first_sample=0) == []


def test_playback_starts_at_the_first_audible_sample():
    # Chunk 1 is silence; playback starts with chunk 2 (t=1.0), so the late chunk 3
    # (t=1.4, 0.5 s of audio in hand) is in time, whereas from t=0 it would be late.
    arrivals = _chunks([0.0, 1.0, 1.4], seconds=0.5)
    assert count_underruns(arrivals, first_sample=int(0.5 * SR)) == (0, 0.0)
    assert count_underruns(arrivals, first_sample=0)[0] == 1
    assert count_underruns(arrivals, first_sample=10 * SR) == (0, 0.0)  # never audible


def test_stream_finds_the_first_audible_sample_across_odd_chunks():
    pcm = np.zeros(100, dtype="<i2")
    pcm[60] = 40  # above 1e-3 of full scale (32.8); 30 is not
    pcm[10] = 30
    data = pcm.tobytes()
    stream = loadtest._Stream(threshold=1e-3)
    assert not stream.add(data[:101], 0.1)  # odd: half a sample waits for the next chunk
    assert stream.add(data[101:], 0.2)
    assert stream.first_audible == 60 and stream.samples == 100
    assert stream.arrivals == [(0.1, 50), (0.2, 100)]


def test_percentiles_on_known_data():
    p = percentiles([float(v) for v in range(1, 101)])  # 1..100
    assert (p.count, p.p50, p.mean, p.max) == (100, 50.5, 50.5, 100.0)
    assert p.p95 == pytest.approx(95.05) and p.p99 == pytest.approx(99.01)
    assert percentiles([]).p95 is None


def _pcm_tone(seconds: float) -> bytes:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * 32767 * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes()


async def _chunked(data: bytes, size: int = 4801):
    """A streamed body in odd-sized chunks, as a server's would arrive."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_errors_are_counted_by_kind_with_a_mock_transport():
    seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        n = len(seen)
        if n % 3 == 1:
            return httpx.Response(429, json={"error": {"message": "busy"}})
        if n % 3 == 2:
            return httpx.Response(500, json={"error": {"message": "boom"}})
        return httpx.Response(200, content=_chunked(_pcm_tone(0.2)))

    settings = LoadtestSettings(
        url="http://loadtest.invalid", rate=50.0, duration_s=0.6, warmup_s=0.0, seed=1
    )
    result = run_loadtest(settings, transport=httpx.MockTransport(answer))
    s = result.summary
    assert s.sent == len(seen) > 6
    assert s.errors == {"http_429": (len(seen) + 2) // 3, "http_500": (len(seen) + 1) // 3}
    assert s.completed == len(seen) // 3 and s.error_count + s.completed == s.sent
    assert s.audio_s == pytest.approx(0.2 * s.completed)
    assert all(b["stream"] is True and b["response_format"] == "pcm" for b in seen)
    assert all(b["voice"] == "aiden" and b["input"] for b in seen)


def test_connection_errors_and_the_concurrency_limit():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    settings = LoadtestSettings(url="http://x.invalid", rate=40.0, duration_s=0.5, warmup_s=0)
    s = run_loadtest(settings, transport=httpx.MockTransport(refuse)).summary
    assert s.errors == {"connect": s.sent} and s.completed == 0 and s.sent > 5

    async def slow(request: httpx.Request) -> httpx.Response:
        import asyncio

        await asyncio.sleep(5)
        return httpx.Response(200, content=_chunked(_pcm_tone(0.1)))

    limited = LoadtestSettings(
        url="http://x.invalid",
        rate=40.0,
        duration_s=0.5,
        warmup_s=0,
        timeout_s=0.3,
        concurrency_limit=2,
    )
    s = run_loadtest(limited, transport=httpx.MockTransport(slow)).summary
    assert s.errors == {"timeout": s.sent} and s.dropped > 0
    assert s.sent + s.dropped == s.scheduled


def test_the_concurrency_limit_holds_for_arrivals_in_a_burst():
    import asyncio

    now, peak = 0, 0

    async def count(request: httpx.Request) -> httpx.Response:
        nonlocal now, peak
        now += 1
        peak = max(peak, now)
        await asyncio.sleep(0.2)
        now -= 1
        return httpx.Response(200, content=_chunked(_pcm_tone(0.1)))

    # ~100 arrivals within 50 ms: many are due in the same turn of the event loop
    burst = LoadtestSettings(
        url="http://x.invalid", rate=2000.0, duration_s=0.05, warmup_s=0, concurrency_limit=3
    )
    s = run_loadtest(burst, transport=httpx.MockTransport(count)).summary
    assert peak == 3 and s.sent == s.completed >= 3 and s.dropped > 50


def test_prompts_from_a_file_and_their_checks(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text('{"input": "Hi there.", "voice": "ryan", "seed": 2}\n\n{"input": "Yo."}\n')
    prompts = load_prompts(good)
    assert prompts == [{"input": "Hi there.", "voice": "ryan", "seed": 2}, {"input": "Yo."}]
    body = loadtest.request_body(prompts[0], "aiden")
    assert body["voice"] == "ryan" and body["stream"] is True and body["seed"] == 2
    assert loadtest.request_body(prompts[1], None).get("voice") is None
    for line, words in [
        ('{"voice": "ryan"}', "input"),
        ('{"input": "  "}', "empty"),
        ('{"input": "x", "response_format": "wav"}', "response_format"),
        ("not json", "not JSON"),
    ]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(line + "\n")
        with pytest.raises(ValueError, match=words):
            load_prompts(bad)


def test_shipped_prompts_are_package_data_of_an_installed_copy(tmp_path):
    """Build the package the way an install does (setuptools' build_py, reading
    pyproject.toml), then load the prompts from that copy alone, outside this checkout."""
    src, site, work = tmp_path / "src", tmp_path / "site", tmp_path / "work"
    src.mkdir()
    work.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("*.pyc", "__pycache__")
    shutil.copytree(ROOT / "fastqwen", src / "fastqwen", ignore=ignore)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["GIT_CEILING_DIRECTORIES"] = str(tmp_path)
    build = [sys.executable, "-c", "from setuptools import setup; setup()"]
    built = subprocess.run(
        [*build, "-q", "build_py", "--build-lib", str(site)],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    assert (site / "fastqwen" / "tools" / "data" / "loadtest_prompts.jsonl").is_file()
    script = (
        "import json; from fastqwen.tools import loadtest\n"
        "p = loadtest.load_prompts()\n"
        "print(json.dumps([loadtest.__file__, [len(x['input'].split()) for x in p]]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=work,
        env={**env, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    module, words = json.loads(out.stdout.strip().splitlines()[-1])
    assert module.startswith(str(site))
    assert len(words) >= 10 and all(5 <= n <= 40 for n in words)


def test_loadtest_command_options():
    args = cli.build_parser().parse_args(
        ["loadtest", "--rate", "10", "--duration", "30", "--warmup", "5", "-o", "r.json"]
    )
    assert (args.url, args.rate, args.duration, args.warmup) == (
        "http://127.0.0.1:8000",
        10.0,
        30.0,
        5.0,
    )
    assert args.voice == "aiden" and args.output == Path("r.json")
    with pytest.raises(ValueError, match="rate"):
        LoadtestSettings(rate=0)


@pytest.fixture(scope="module")
def server_url(tiny_model):
    pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    from fastqwen.api import FastQwen3TTS
    from fastqwen.config import EngineConfig
    from tests.test_serve import serving

    engine = FastQwen3TTS(tiny_model("custom_voice").tts, EngineConfig(max_batch_size=4))
    try:
        with serving(engine, max_queue=16, request_timeout_s=60) as url:
            yield url
    finally:
        engine.close()


def test_a_short_run_against_the_tiny_server(server_url, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    lines = [{"input": "Hello there, this is a short test.", "max_new_tokens": 16, "seed": 1}]
    lines.append({"input": "And a second one, a little longer.", "max_new_tokens": 24})
    prompts.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "results.json"
    argv = ["loadtest", "--url", server_url, "--rate", "2", "--duration", "4", "--warmup", "1"]
    argv += ["--prompts", str(prompts), "--timeout", "30", "--seed", "5", "-o", str(out)]
    assert cli.main(argv) == 0
    got = json.loads(out.read_text())
    s = got["summary"]
    assert s["error_count"] == 0 and s["errors"] == {} and s["dropped"] == 0
    assert s["completed"] == s["sent"] == s["scheduled"] > 0
    assert s["audio_s"] > 0 and s["audio_s_per_s"] > 0
    for key in ("ttfb_s", "ttfa_s", "e2e_s", "rtf"):
        assert set(s[key]) == {"count", "p50", "p95", "p99", "mean", "max"}
    assert got["settings"]["rate"] == 2.0 and got["started_at"]
    measured = [r for r in got["requests"] if r["measured"]]
    warm = [r for r in got["requests"] if not r["measured"]]
    assert len(measured) == s["scheduled"] and all(r["scheduled_s"] < 1.0 for r in warm)
    for r in measured:
        assert r["outcome"] == "ok", r
        assert 0 < r["ttfb_s"] <= r["e2e_s"]
        if r["ttfa_s"] is not None:  # random weights may stay below the audible level
            assert r["ttfb_s"] <= r["ttfa_s"] <= r["e2e_s"]
            assert r["underruns"] >= 0 and r["stall_s"] >= 0
        assert r["audio_s"] > 0 and r["rtf"] == pytest.approx(r["e2e_s"] / r["audio_s"])
    assert s["ttfa_s"]["count"] + s["silent"] == s["completed"]
