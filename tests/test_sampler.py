"""The thread sampler behind `fastqwen bench --sample-threads`."""

import threading
import time

import pytest

from fastqwen.tools.bench.sampler import ThreadSampler


def _wait_here(stop: threading.Event) -> None:
    stop.wait(5)


def test_the_sampler_finds_the_line_a_named_thread_waits_on():
    stop = threading.Event()
    worker = threading.Thread(target=_wait_here, args=(stop,), name="worker-1")
    other = threading.Thread(target=_wait_here, args=(stop,), name="unwatched")
    worker.start()
    other.start()
    try:
        with ThreadSampler(("worker", "absent"), interval_s=0.002) as sampler:
            time.sleep(0.2)
    finally:
        stop.set()
        worker.join()
        other.join()
    top = sampler.top("worker")
    assert top["samples"] >= 10
    # the innermost frame is threading's wait; no frame of the watched thread is in the
    # package, unless the package is this test's directory
    assert top["inner"][0][0].startswith("threading.py:") and top["inner"][0][1] > 0.9
    assert top["own"] == []
    assert sampler.top("absent") == {"samples": 0, "inner": [], "own": []}
    assert "unwatched" not in sampler.samples
    tests = ThreadSampler(("worker",), package="tests")
    worker = threading.Thread(target=_wait_here, args=(stop,), name="worker-2")
    stop.clear()
    worker.start()
    try:
        time.sleep(0.05)
        tests.sample()
    finally:
        stop.set()
        worker.join()
    (line, share), *_ = tests.top("worker")["own"]
    assert line.startswith("test_sampler.py:") and line.endswith("_wait_here") and share == 1.0


def test_the_sampler_refuses_a_zero_interval():
    with pytest.raises(ValueError, match="interval_s must be > 0, got 0"):
        ThreadSampler(("x",), interval_s=0)
