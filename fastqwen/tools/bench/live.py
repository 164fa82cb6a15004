"""The benchmark and serving notebooks' settings, and their live runs on this machine: a
bench run on its GPU, and a tiny CPU load test of `fastqwen serve`.

`BenchSettings` holds the notebook's parameters. Generation settings are not restated
here: `max_new_tokens` defaults to `DEMO_MAX_NEW_TOKENS`, every other field is the
`SamplingParams` default, and `sampling` is the `SamplingParams` the bench hands to each
engine unchanged. Torch is imported only for a live run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

from fastqwen.config import SamplingParams
from fastqwen.tools.bench.records import BenchRun, label, sort_key, write_run
from fastqwen.tools.defaults import BENCH_RUNS, DEMO_MAX_NEW_TOKENS, demo_sampling
from fastqwen.tools.env import project_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchSettings:
    """The notebook's parameters (see its `parameters` cell); None there means the default
    here."""

    results_dir: str | None = None
    run_live: bool | None = None
    model: str = "random:1.7b-custom_voice"
    live_engines: tuple[str, ...] = ("static", "dynamic")
    runs: int = BENCH_RUNS
    max_new_tokens: int = DEMO_MAX_NEW_TOKENS
    static_compile: bool = False  # True: torch.compile the frame functions (as BENCH_COMPILE=true)
    live_out: str | None = None

    @property
    def sampling(self) -> SamplingParams:
        """What each engine of the live run generates with."""
        return demo_sampling(max_new_tokens=self.max_new_tokens)

    def live_wanted(self, cuda_available: bool) -> bool:
        """Run the bench here? False: never. True: yes (needs CUDA). None: when CUDA is
        present and no results_dir was asked for."""
        if self.run_live is None:
            return cuda_available and self.results_dir is None
        if self.run_live and not cuda_available:
            raise ValueError("run_live=True needs CUDA, which is not available; pass False")
        return bool(self.run_live)


PARAMETERS = tuple(f.name for f in fields(BenchSettings))  # the notebook's, in order


def notebook_settings(namespace: Mapping, names_before: set[str]) -> BenchSettings:
    """The parameters from the notebook's globals; an unknown (misspelt) name is an error,
    and None takes the `BenchSettings` default."""
    new = {n for n in namespace if not n.startswith("_") and n not in names_before}
    unknown = sorted(new - set(PARAMETERS))
    if unknown:
        raise ValueError(
            f"unknown notebook parameter(s) {unknown}; valid names: {', '.join(PARAMETERS)}"
        )
    values = {n: namespace[n] for n in PARAMETERS if namespace.get(n) is not None}
    if "live_engines" in values:
        engines = values["live_engines"]
        values["live_engines"] = tuple(engines.split(",") if isinstance(engines, str) else engines)
    return BenchSettings(**values)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def live_run(settings: BenchSettings, bench_fn: Callable | None = None) -> BenchRun:
    """Benchmark `settings.live_engines` on `settings.model` on CUDA in this process.

    A failing engine becomes an error record; the others still run. Each engine's peak
    memory is reset by `run_bench`, but what an earlier engine left allocated counts: for
    exact peaks use `bench/device_run.sh` (one process per engine). Records are written
    to `settings.live_out` (a new run directory, relative to the project folder) when set.
    """
    from fastqwen.tools.bench import run as bench

    bench_fn = bench_fn or bench.run_bench
    records = []
    for engine in settings.live_engines:
        log.info("live bench: %s on %s", engine, settings.model)
        options = {"compile": settings.static_compile} if engine == "static" else None
        try:
            found = bench_fn(
                engine,
                settings.model,
                device="cuda",
                dtype="bfloat16",
                engine_options=options,
                sampling=settings.sampling,
                runs=settings.runs,
            )
        except Exception as exc:  # one failed engine must not lose the others
            log.exception("live bench of %s failed", engine)
            found = [bench.error_record(engine, settings.model, exc, device="cuda")]
        for record in found:
            name = f"{engine}-{record.get('size') or 'model'}.json"
            records.append({**record, "label": label(record), "file": name})
    run = BenchRun("live", sorted(records, key=sort_key))
    if settings.live_out:
        run.path = write_run(run, project_path(settings.live_out))
    return run


@dataclass(frozen=True)
class ServingSettings:
    """The serving notebook's parameters (see its `parameters` cell).

    results_dir: a serving run under bench/results (None: the newest).
    run_tiny: load-test a tiny random-weight model on CPU here. None: only when no serving
        run is committed, so the notebook shows the same table and charts either way.
    tiny_rates, tiny_duration_s: the tiny run's request rates and measured seconds per rate
        (short: `make test` runs the notebook on two CPU cores).
    """

    results_dir: str | None = None
    run_tiny: bool | None = None
    tiny_rates: tuple[float, ...] = (1.0, 4.0)
    tiny_duration_s: float = 3.0

    def tiny_wanted(self, committed_run_found: bool) -> bool:
        if self.run_tiny is None:
            return not committed_run_found and self.results_dir is None
        return bool(self.run_tiny)


SERVING_PARAMETERS = tuple(f.name for f in fields(ServingSettings))
TINY_MODEL = "random:tiny-custom_voice"
# One short prompt with a frame cap: random weights rarely emit EOS, and the tiny run must
# stay within seconds.
TINY_PROMPT = {"input": "Hello there, this is a short test.", "max_new_tokens": 24}


def serving_settings(namespace: Mapping, names_before: set[str]) -> ServingSettings:
    """The serving notebook's parameters from its globals; an unknown name is an error."""
    new = {n for n in namespace if not n.startswith("_") and n not in names_before}
    unknown = sorted(new - set(SERVING_PARAMETERS))
    if unknown:
        raise ValueError(
            f"unknown notebook parameter(s) {unknown}; valid names: {', '.join(SERVING_PARAMETERS)}"
        )
    values = {n: namespace[n] for n in SERVING_PARAMETERS if namespace.get(n) is not None}
    if "tiny_rates" in values:
        rates = values["tiny_rates"]
        rates = rates.split(",") if isinstance(rates, str) else rates
        values["tiny_rates"] = tuple(float(r) for r in rates)
    return ServingSettings(**values)


def tiny_serving_run(settings: ServingSettings, max_batch_size: int = 8):
    """`fastqwen serve`'s app on the tiny CPU model, in this process (uvicorn in a thread on
    a free port), load-tested at each of `settings.tiny_rates`: a `ServingRun` named
    `tiny-cpu` (not written anywhere). It shows the pieces of a serving run, not a
    measurement: the model has random weights and shares two cores with its load tester.
    """
    import socket
    import tempfile
    import threading
    import time
    from pathlib import Path

    import httpx
    import uvicorn

    from fastqwen.api import FastQwen3TTS
    from fastqwen.config import EngineConfig
    from fastqwen.tools.bench.serving import ServingRun
    from fastqwen.tools.loadtest import LoadtestSettings, run_loadtest
    from fastqwen.tools.serve.app import create_app
    from fastqwen.tools.serve.settings import ServeSettings

    started = time.perf_counter()
    engine = FastQwen3TTS.from_pretrained(
        TINY_MODEL,
        device="cpu",
        dtype="float32",
        config=EngineConfig(max_batch_size=max_batch_size),
    )
    with socket.socket() as s:  # a free port: the OS picks one, we hand it to uvicorn
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(engine, ServeSettings(model_name=TINY_MODEL))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="fastqwen-tiny-serve", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    results = []
    try:
        if not _wait_healthy(url, httpx, deadline=time.monotonic() + 120):
            raise RuntimeError(f"the tiny server at {url} was not healthy after 120 s")
        health = {
            "model": TINY_MODEL,
            "device": "cpu",
            "max_batch_size": max_batch_size,
            "time_to_healthy_s": time.perf_counter() - started,
        }
        with tempfile.TemporaryDirectory(prefix="fastqwen-tiny-serve-") as tmp:
            prompts = Path(tmp) / "prompts.jsonl"
            prompts.write_text(json.dumps(TINY_PROMPT) + "\n")
            for rate in settings.tiny_rates:
                test = LoadtestSettings(
                    url=url,
                    rate=rate,
                    duration_s=settings.tiny_duration_s,
                    warmup_s=0.5,
                    prompts=prompts,
                    timeout_s=15.0,
                )
                results.append(run_loadtest(test).to_dict())
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        engine.close()
    return ServingRun("tiny-cpu", None, results, health)


def _wait_healthy(url: str, httpx, deadline: float) -> bool:
    """Poll /health until 200 (the app's warm-up has run) or the deadline."""
    import time

    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return True
        except httpx.TransportError:  # not listening yet
            pass
        time.sleep(0.05)
    return False


__all__ = [
    "PARAMETERS",
    "SERVING_PARAMETERS",
    "BenchSettings",
    "ServingSettings",
    "cuda_available",
    "live_run",
    "notebook_settings",
    "serving_settings",
    "tiny_serving_run",
]
