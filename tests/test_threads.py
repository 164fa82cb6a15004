"""Many threads, one process: every call returns exactly what it returns alone.

Each case runs several rounds, with the calls dealt to the threads in a different order each
time, so a race has a chance to show. Threads are joined with a timeout, so a deadlock fails
the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import gc
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from fastqwen import FastQwen3TTS
from fastqwen.config import SamplingParams
from fastqwen.prompts.builder import VoiceRequest
from fastqwen.verify.parity import run_parity
from fastqwen.verify.reference import run_reference

ROUNDS = 3
TIMEOUT_S = 120.0  # per round; a deadlock fails here
FRAMES = 12  # max_new_tokens: short calls, many of them
CODEC_ROUNDING = 5e-5  # audio of one stream decoded alone vs in a codec batch
SAMPLED = SamplingParams(max_new_tokens=FRAMES)
GREEDY = SamplingParams(max_new_tokens=FRAMES, do_sample=False, subtalker_dosample=False)
TEXTS = (
    "The train was late again this morning.",
    "Could you pass me the salt, please?",
    "We walked along the river until the sun went down.",
)


@dataclass
class Out:
    """What one call returned: its audio, and what must match exactly (codes, or KLs)."""

    audio: np.ndarray
    exact: torch.Tensor | None = None


Call = Callable[[], Out]


@pytest.fixture(scope="module")
def custom(tiny_engine) -> FastQwen3TTS:
    return tiny_engine("custom_voice")


@pytest.fixture(scope="module")
def design(tiny_engine) -> FastQwen3TTS:
    return tiny_engine("voice_design")


def result(r) -> Out:
    return Out(r.audio, r.codes)


def read_stream(chunks, pause_s: float = 0.0) -> Out:
    """Read a stream chunk by chunk; a pause between chunks lets other threads try to cut in."""
    pieces = []
    for chunk in chunks:
        pieces.append(chunk.audio)
        time.sleep(pause_s)
    return Out(np.concatenate(pieces))


def assert_same(got: Out, want: Out, what: str) -> None:
    if want.exact is not None and not torch.equal(got.exact, want.exact):
        shapes = got.exact.shape, want.exact.shape
        first = (
            (got.exact != want.exact).nonzero()[0].tolist() if shapes[0] == shapes[1] else shapes
        )
        raise AssertionError(
            f"{what}: differs from its solo run first at {first} (frame, codebook)"
        )
    assert got.audio.shape == want.audio.shape, f"{what}: {got.audio.shape} != {want.audio.shape}"
    # The engine's codec thread decodes streams that wait together in one batch, which
    # rounds differently from a decode alone (seen up to 1.0e-5 at 0.42 of full scale);
    # a wrong or misplaced frame differs by orders of magnitude more.
    np.testing.assert_allclose(got.audio, want.audio, atol=CODEC_ROUNDING, rtol=0, err_msg=what)


def run_threads(jobs: list[list[tuple[str, Call]]]) -> list[list[Out]]:
    """Run each list of calls in its own thread, all released at once; fail on a deadlock."""
    barrier = threading.Barrier(len(jobs))
    outs: list[list[Out]] = [[] for _ in jobs]
    errors: list[tuple[str, BaseException]] = []

    def work(i: int) -> None:
        barrier.wait()
        for name, call in jobs[i]:
            try:
                outs[i].append(call())
            except BaseException as e:  # reported by the main thread
                errors.append((name, e))
                return

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(jobs))]
    deadline = time.monotonic() + TIMEOUT_S
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(deadline - time.monotonic(), 0.0))
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"threads {stuck} still running after {TIMEOUT_S} s: deadlock?"
    if errors:
        name, error = errors[0]
        raise AssertionError(f"{name} raised in its thread: {error!r}") from error
    return outs


def in_thread(call: Call) -> Out:
    return run_threads([[("call", call)]])[0][0]


def check_rounds(calls: list[tuple[str, Call]], threads: int) -> None:
    """Run every call alone, then in `threads` threads for ROUNDS rounds; compare each result."""
    solo = {name: call() for name, call in calls}
    per_thread = len(calls) // threads
    for r in range(ROUNDS):
        dealt = random.Random(r).sample(calls, len(calls))
        jobs = [dealt[i * per_thread : (i + 1) * per_thread] for i in range(threads)]
        for job, outs in zip(jobs, run_threads(jobs), strict=True):
            for (name, _), out in zip(job, outs, strict=True):
                assert_same(out, solo[name], f"round {r}, {name}")


def test_four_threads_two_calls_each(custom, design):
    """Two models, three modes of call, speakers, seeds, greedy and sampled, two streams."""

    def voice(text: str, speaker: str, **kw) -> VoiceRequest:
        return VoiceRequest("custom_voice", text, "english", speaker=speaker, **kw)

    a, b, c = TEXTS
    calls: list[tuple[str, Call]] = [
        (
            "generate_custom_voice aiden",
            lambda: Out(
                custom.generate_custom_voice(a, speaker="aiden", seed=1, max_new_tokens=FRAMES)[0][
                    0
                ]
            ),
        ),
        (
            "generate ryan instruct",
            lambda: result(custom.generate(voice(b, "ryan", instruct="Slowly."), SAMPLED, 3)),
        ),
        ("generate dylan greedy", lambda: result(custom.generate(voice(c, "dylan"), GREEDY, 4))),
        ("generate serena", lambda: result(custom.generate(voice(a, "serena"), SAMPLED, 2))),
        (
            "stream_custom_voice vivian",
            lambda: read_stream(
                custom.stream_custom_voice(
                    b, speaker="vivian", seed=5, max_new_tokens=FRAMES, chunk_frames=3
                ),
                pause_s=0.002,
            ),
        ),
        (
            "stream eric",
            lambda: read_stream(
                custom.stream(voice(c, "eric"), SAMPLED, 6, first_chunk_frames=1, chunk_frames=2)
            ),
        ),
        (
            "generate_voice_design",
            lambda: Out(
                design.generate_voice_design(c, instruct="calm", seed=7, max_new_tokens=FRAMES)[0][
                    0
                ]
            ),
        ),
        (
            "generate voice_design",
            lambda: result(
                design.generate(VoiceRequest("voice_design", a, instruct="bright"), SAMPLED, 8)
            ),
        ),
    ]
    check_rounds(calls, threads=4)


def test_engine_and_reference_side_by_side(custom):
    """The engine, the reference runner and run_parity (both at once) on one qwen_tts model."""
    requests = [
        VoiceRequest("custom_voice", text, "english", speaker=speaker)
        for text, speaker in zip(TEXTS, ("aiden", "sohee", "uncle_fu"), strict=True)
    ]

    def parity(request: VoiceRequest, seed: int) -> Out:
        report = run_parity(custom, request, SAMPLED, seed)
        assert report.codes.identical, report.codes.describe()
        kl = torch.tensor(report.forced.cb0_kl + report.forced.sub_kl)  # teacher-forced run
        return Out(np.concatenate([report.static.audio, report.dynamic.audio]), kl)

    calls: list[tuple[str, Call]] = [
        ("engine 0", lambda: result(custom.generate(requests[0], SAMPLED, 11))),
        ("engine 1", lambda: result(custom.generate(requests[1], GREEDY, 12))),
        ("reference 2", lambda: result(run_reference(custom.tts, requests[2], SAMPLED, 13))),
        ("parity 1", lambda: parity(requests[1], 14)),
    ]
    check_rounds(calls, threads=2)


def stream_a(custom, **kw):
    return custom.stream_custom_voice(
        TEXTS[0], speaker="aiden", seed=21, max_new_tokens=FRAMES, chunk_frames=2, **kw
    )


def generate_b(custom) -> Out:
    wavs, _ = custom.generate_custom_voice(TEXTS[1], speaker="ryan", seed=22, max_new_tokens=FRAMES)
    return Out(wavs[0])


@pytest.mark.parametrize("abandon", ["close", "gc"])
def test_abandoned_stream_frees_the_slot(custom, abandon):
    want = generate_b(custom)
    for r in range(ROUNDS):
        chunks = stream_a(custom)
        next(chunks)
        next(chunks)
        if abandon == "close":
            chunks.close()
        else:
            del chunks
            gc.collect()
        assert_same(in_thread(lambda: generate_b(custom)), want, f"round {r}, after {abandon}")


def test_unstarted_stream_holds_nothing(custom):
    want_a, want_b = read_stream(stream_a(custom)), generate_b(custom)
    chunks = stream_a(custom)  # created, never started: nothing has run
    assert_same(in_thread(lambda: generate_b(custom)), want_b, "call beside an unstarted stream")
    assert_same(read_stream(chunks), want_a, "the stream, started afterwards")


def test_a_call_runs_beside_an_open_stream(custom):
    """The scheduler batches them: a call from another thread finishes while a stream is
    open and unread, and both give what they give alone."""
    want_a, want_b = read_stream(stream_a(custom)), generate_b(custom)
    for r in range(ROUNDS):
        chunks = stream_a(custom)
        first = next(chunks).audio
        got: list[Out] = []
        other = threading.Thread(target=lambda out=got: out.append(generate_b(custom)), daemon=True)
        other.start()
        other.join(TIMEOUT_S)
        assert not other.is_alive(), f"round {r}: the call waited for the open stream"
        assert_same(got[0], want_b, f"round {r}, call beside the stream")
        rest = read_stream(chunks)
        assert_same(Out(np.concatenate([first, rest.audio])), want_a, f"round {r}, stream")


def test_one_thread_may_interleave_two_streams(custom):
    """Two streams read alternately in one thread, and a call between their chunks: each
    gives its solo audio."""
    want_a, want_b = read_stream(stream_a(custom)), generate_b(custom)
    want_a3 = read_stream(stream_a(custom, first_chunk_frames=3))
    first, second = stream_a(custom), stream_a(custom, first_chunk_frames=3)
    pieces: dict[str, list[np.ndarray]] = {"first": [], "second": []}
    live = {"first": first, "second": second}
    while live:
        for name, chunks in list(live.items()):
            chunk = next(chunks, None)
            if chunk is None:
                del live[name]
            else:
                pieces[name].append(chunk.audio)
        if len(pieces["first"]) == 1:
            assert_same(generate_b(custom), want_b, "a call between the streams' chunks")
    assert_same(Out(np.concatenate(pieces["first"])), want_a, "the first stream")
    assert_same(Out(np.concatenate(pieces["second"])), want_a3, "the second stream")


def test_a_stream_may_be_read_from_several_threads(custom):
    """As `asyncio.to_thread(next, chunks)` does: each chunk read on whichever thread is free."""
    want_a, want_b = read_stream(stream_a(custom)), generate_b(custom)
    chunks = stream_a(custom)
    pieces = [next(chunks).audio]
    while (piece := in_thread(lambda: Out(next(chunks, Out(np.zeros(0))).audio))).audio.size:
        pieces.append(piece.audio)
    assert_same(Out(np.concatenate(pieces)), want_a, "stream read from many threads")
    assert_same(in_thread(lambda: generate_b(custom)), want_b, "call after it")


def test_asyncio_to_thread(custom):
    """The documented way in from an event loop: the blocking API in a thread."""
    speakers = ("aiden", "serena", "eric")
    solo = [
        custom.generate_custom_voice(TEXTS[0], speaker=s, seed=i, max_new_tokens=FRAMES)[0][0]
        for i, s in enumerate(speakers)
    ]

    async def main():
        return await asyncio.gather(
            *(
                asyncio.to_thread(
                    custom.generate_custom_voice,
                    TEXTS[0],
                    speaker=s,
                    seed=i,
                    max_new_tokens=FRAMES,
                )
                for i, s in enumerate(speakers)
            )
        )

    for got, want in zip(asyncio.run(asyncio.wait_for(main(), TIMEOUT_S)), solo, strict=True):
        assert_same(Out(got[0][0]), Out(want), "asyncio.to_thread")


EXIT_AFTER_A_DROPPED_STREAM = """
from fastqwen import FastQwen3TTS
from fastqwen.config import SamplingParams
from fastqwen.prompts.builder import VoiceRequest

engine = FastQwen3TTS.from_pretrained("random:tiny-custom_voice", device="cpu")
request = VoiceRequest("custom_voice", "A longer text, dropped after its first chunk.", "english",
                       speaker="aiden")
chunks = engine.stream(request, SamplingParams(max_new_tokens=60), seed=1)
next(chunks)
chunks.close()  # the engine is never closed: the interpreter exits with its loop running
print("exiting")
"""


def test_a_program_exits_cleanly_right_after_dropping_a_stream():
    """The interpreter's exit closes engines the program left open: their frame loop was
    still inside a torch op when torch was torn down, and the process aborted (status 134,
    "terminate called without an active exception") after printing everything."""
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", EXIT_AFTER_A_DROPPED_STREAM],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )
    assert done.stdout.strip().endswith("exiting"), done.stdout + done.stderr[-2000:]
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
