"""The benchmark notebook's settings, and a live bench run on this machine's GPU.

`BenchSettings` holds the notebook's parameters. Generation settings are not restated
here: `max_new_tokens` defaults to `DEMO_MAX_NEW_TOKENS`, every other field is the
`SamplingParams` default, and `sampling` is the `SamplingParams` the bench hands to each
engine unchanged. Torch is imported only for a live run.
"""

from __future__ import annotations

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
    static_compile: bool = True  # as bench/device_run.sh, whose results are committed
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


__all__ = ["PARAMETERS", "BenchSettings", "cuda_available", "live_run", "notebook_settings"]
