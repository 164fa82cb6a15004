"""`fastqwen loadtest`: drive a running `fastqwen serve` (or any server with the same
`POST /v1/audio/speech`) with open-loop Poisson arrivals and measure what a listener hears.

Open loop: request start times are drawn in advance as a Poisson process (exponential gaps
from a seeded RNG) and each request starts on time whatever the earlier ones are doing. A
closed loop (N clients, each waiting for its previous answer) slows its own arrivals when
the server slows, which hides exactly the queueing a real audience causes.

Every request streams raw PCM16 (`stream: true`, `response_format: pcm`), and is timed at:

- time to first byte (TTFB): the first body bytes;
- time to first audible audio (TTFA): the chunk holding the first sample whose magnitude
  exceeds `audible_threshold` of full scale (default 1e-3, about 33 LSB of PCM16, some
  -60 dBFS): leading near-silence is not something a listener hears;
- end to end (E2E): the last byte;
- underruns: playback is modelled as starting at the first audible sample and then
  consuming audio in real time; an underrun is a moment where it needs a sample that has
  not arrived. Playback then stalls until the next chunk comes, and carries on from there.

A warm-up phase is sent first and not counted; the measured window follows. The run is
bounded in count (`max_requests`) and time: whatever is still running at
warmup + duration + timeout is cancelled and counted as `cut`.

httpx comes with the `serve` extra; it is imported only when a test runs, so the CLI
starts without it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import numpy as np

SAMPLE_RATE = 24000  # the PCM the server streams: 16-bit little-endian mono, 24 kHz
FULL_SCALE = 32768.0
DEFAULT_VOICE = "aiden"
DEFAULT_PROMPTS = "data/loadtest_prompts.jsonl"  # inside fastqwen/tools, as package data
SPEECH_PATH = "/v1/audio/speech"
FORCED_FIELDS = {"stream": True, "response_format": "pcm"}  # what the timing depends on


@dataclass(frozen=True)
class LoadtestSettings:
    """One load test.

    url: the server's base URL (the path /v1/audio/speech is added).
    rate: mean arrivals per second of the Poisson process.
    duration_s: the measured window; warmup_s: the uncounted phase before it.
    prompts: a JSONL file, one request body per line (`input`, optional `voice` and any
        other request field); None: the prompts shipped with fastqwen.
    voice: for lines without one; None sends no voice (VoiceDesign and Base servers).
    max_requests: at most this many requests in all (warm-up included); None: no cap.
    timeout_s: longest a request may take; also how long the run waits after the last
        arrival before cancelling what is left.
    concurrency_limit: requests in flight at most; an arrival beyond it is dropped, not
        delayed, so the schedule stays open-loop. None: no limit.
    seed: seeds the arrival times and the choice of prompts.
    audible_threshold: the fraction of full scale a sample must exceed to count as audible.
    """

    url: str = "http://127.0.0.1:8000"
    rate: float = 1.0
    duration_s: float = 30.0
    warmup_s: float = 5.0
    prompts: Path | None = None
    voice: str | None = DEFAULT_VOICE
    max_requests: int | None = None
    timeout_s: float = 60.0
    concurrency_limit: int | None = None
    seed: int = 0
    audible_threshold: float = 1e-3

    def __post_init__(self) -> None:
        checks = [
            (self.rate > 0, f"rate must be > 0 requests/s, got {self.rate}"),
            (self.duration_s > 0, f"duration must be > 0 s, got {self.duration_s}"),
            (self.warmup_s >= 0, f"warmup must be >= 0 s, got {self.warmup_s}"),
            (self.timeout_s > 0, f"timeout must be > 0 s, got {self.timeout_s}"),
            (
                self.max_requests is None or self.max_requests >= 1,
                f"max_requests must be >= 1, got {self.max_requests}",
            ),
            (
                self.concurrency_limit is None or self.concurrency_limit >= 1,
                f"concurrency_limit must be >= 1, got {self.concurrency_limit}",
            ),
            (
                0 < self.audible_threshold < 1,
                f"audible_threshold must be in (0, 1), got {self.audible_threshold}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass
class RequestRecord:
    """One request. Times are seconds; offsets from the start of the run, latencies from
    when the request was sent. outcome: ok, dropped, cut, http_<status>, timeout, connect,
    transport, or client_error (an exception of the load tester itself)."""

    index: int
    scheduled_s: float
    measured: bool  # scheduled inside the measured window (not warm-up)
    prompt: int  # line of the prompt set
    outcome: str = "pending"
    late_s: float | None = None  # sent this long after its scheduled time (client lag)
    ttfb_s: float | None = None
    ttfa_s: float | None = None  # None for a response with no audible sample
    e2e_s: float | None = None
    audio_s: float | None = None
    rtf: float | None = None  # e2e_s / audio_s: wall seconds per second of audio
    underruns: int | None = None
    stall_s: float | None = None
    # where the first underrun fell, in seconds of audio after the first audible sample:
    # at the first chunk's length, the second chunk came too late
    first_underrun_audio_s: float | None = None
    ended_s: float | None = None  # offset of the last byte
    error: str | None = None


@dataclass
class Percentiles:
    """Distribution of one latency over the measured requests that have it."""

    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    mean: float | None
    max: float | None


@dataclass
class LoadtestSummary:
    """The measured window. achieved_rate: measured requests sent per second of the
    window. audio_s_per_s: audio of the completed measured requests over the time from the
    window's start to the later of its end and the last measured request's end."""

    duration_s: float
    scheduled: int
    sent: int
    completed: int
    errors: dict[str, int]
    error_count: int
    dropped: int
    achieved_rate: float
    audio_s: float
    audio_s_per_s: float
    silent: int  # completed with no audible sample
    underruns: int
    underrun_requests: int
    stall_s: float
    max_late_s: float | None
    first_underrun_audio_s: Percentiles  # over the requests that had one
    ttfb_s: Percentiles
    ttfa_s: Percentiles
    e2e_s: Percentiles
    rtf: Percentiles


@dataclass
class LoadtestResult:
    """Everything a run produced: its settings, the summary, and every request."""

    settings: dict
    started_at: str
    summary: LoadtestSummary
    requests: list[RequestRecord] = field(default_factory=list)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))


def _plain(value):
    """A settings value as JSON holds it (a path as its string)."""
    return value if value is None or isinstance(value, (bool, int, float)) else str(value)


def poisson_schedule(
    rate: float, horizon_s: float, seed: int, max_requests: int | None = None
) -> list[float]:
    """Arrival offsets in [0, horizon_s) of a Poisson process at `rate` per second:
    exponential gaps with mean 1/rate from `random.Random(seed)`, so a seed fixes them."""
    rng = random.Random(seed)
    times: list[float] = []
    t = rng.expovariate(rate)
    while t < horizon_s and (max_requests is None or len(times) < max_requests):
        times.append(t)
        t += rng.expovariate(rate)
    return times


def percentiles(values: list[float]) -> Percentiles:
    """p50/p95/p99 (linear interpolation between order statistics), mean and max."""
    if not values:
        return Percentiles(0, None, None, None, None, None)
    a = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = (float(v) for v in np.percentile(a, [50, 95, 99]))
    return Percentiles(len(a), p50, p95, p99, float(a.mean()), float(a.max()))


def stalls(
    arrivals: list[tuple[float, int]], first_sample: int, sample_rate: int = SAMPLE_RATE
) -> list[tuple[float, float]]:
    """Each underrun of a stream played from its first audible sample: (where in the audio
    it happened, in seconds from that sample; how long playback stalled, in seconds).

    arrivals: (time, samples received so far) after each chunk, in order. Playback starts
    when the chunk holding `first_sample` arrives and plays from that sample in real time.
    Before each later chunk, the audio already received runs out at
    start + stalled + (received - first_sample) / sample_rate; if the chunk arrives after
    that, playback has stalled for the difference (one underrun, at that audio position).
    """
    start = next((i for i, (_, n) in enumerate(arrivals) if n > first_sample), None)
    if start is None:
        return []
    started_at = arrivals[start][0]
    found, stalled = [], 0.0
    for i in range(start + 1, len(arrivals)):
        position = (arrivals[i - 1][1] - first_sample) / sample_rate
        runs_out = started_at + stalled + position
        arrived = arrivals[i][0]
        if arrived > runs_out:
            found.append((position, arrived - runs_out))
            stalled += arrived - runs_out
    return found


def count_underruns(
    arrivals: list[tuple[float, int]], first_sample: int, sample_rate: int = SAMPLE_RATE
) -> tuple[int, float]:
    """(underrun events, stalled seconds) of a stream played from its first audible sample
    (`stalls`)."""
    found = stalls(arrivals, first_sample, sample_rate)
    return len(found), sum(s for _, s in found)


def load_prompts(path: Path | str | None = None) -> list[dict]:
    """Request bodies from a JSONL file (None: the prompt set shipped with fastqwen).

    Each line is a JSON object with a non-empty `input`; other fields go to the server
    unchanged, except `stream` and `response_format`, which the timing needs to be true
    and pcm (a line that sets them otherwise is an error rather than quietly overridden).
    """
    if path is None:
        name = f"fastqwen/tools/{DEFAULT_PROMPTS}"
        text = resources.files("fastqwen.tools").joinpath(DEFAULT_PROMPTS).read_text("utf-8")
    else:
        name = str(path)
        text = Path(path).read_text(encoding="utf-8")
    prompts = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            body = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{name}:{n}: not JSON: {err}") from err
        if not isinstance(body, dict) or not isinstance(body.get("input"), str):
            raise ValueError(f'{name}:{n}: each line must be an object with an "input" string')
        if not body["input"].strip():
            raise ValueError(f'{name}:{n}: "input" is empty')
        for key, want in FORCED_FIELDS.items():
            if key in body and body[key] != want:
                raise ValueError(f"{name}:{n}: {key} must be {want!r} (or omitted) to be timed")
        prompts.append(body)
    if not prompts:
        raise ValueError(f"{name}: no prompts")
    return prompts


def request_body(prompt: dict, voice: str | None) -> dict:
    """The JSON body for one prompt line: its fields, the default voice if it names none,
    and the streamed-PCM fields."""
    body = dict(prompt)
    if voice is not None:
        body.setdefault("voice", voice)
    body.update(FORCED_FIELDS)
    return body


class _Stream:
    """Turns the body bytes of one streamed response into samples, arrivals and the first
    audible sample, keeping an odd trailing byte for the next chunk."""

    def __init__(self, threshold: float):
        self.level = threshold * FULL_SCALE
        self.samples = 0
        self.first_audible: int | None = None
        self.arrivals: list[tuple[float, int]] = []
        self._odd = b""

    def add(self, data: bytes, t: float) -> bool:
        """Take one chunk arrived at `t`; True if it holds the first audible sample."""
        data = self._odd + data
        whole = len(data) - len(data) % 2
        self._odd = data[whole:]
        pcm = np.frombuffer(data[:whole], dtype="<i2")
        found = False
        if self.first_audible is None and len(pcm):
            loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > self.level)
            if len(loud):
                self.first_audible = self.samples + int(loud[0])
                found = True
        self.samples += len(pcm)
        self.arrivals.append((t, self.samples))
        return found


async def _one(client, record: RequestRecord, body: dict, settings: LoadtestSettings, t0: float):
    """Send one request and fill its record (the caller cancels it at the hard stop)."""
    import httpx

    sent = time.perf_counter()
    record.late_s = sent - t0 - record.scheduled_s
    stream = _Stream(settings.audible_threshold)

    async def receive() -> None:
        async with client.stream("POST", SPEECH_PATH, json=body) as response:
            if not 200 <= response.status_code < 300:
                await response.aread()
                record.outcome = f"http_{response.status_code}"
                record.error = response.text[:200]
                return
            async for data in response.aiter_raw():
                now = time.perf_counter() - sent
                if not data:
                    continue
                if record.ttfb_s is None:
                    record.ttfb_s = now
                if stream.add(data, now):
                    record.ttfa_s = now
            record.outcome = "ok"

    try:
        await asyncio.wait_for(receive(), settings.timeout_s)
    except (asyncio.TimeoutError, httpx.TimeoutException) as err:
        record.outcome, record.error = "timeout", str(err) or type(err).__name__
    except httpx.ConnectError as err:
        record.outcome, record.error = "connect", str(err)
    except httpx.TransportError as err:  # reset, protocol error, stream cut mid-body
        record.outcome, record.error = "transport", f"{type(err).__name__}: {err}"
    except Exception as err:  # a fault of the load tester itself: kept with its request
        record.outcome, record.error = "client_error", f"{type(err).__name__}: {err}"
    ended = time.perf_counter()
    record.ended_s = ended - t0
    if record.outcome != "ok":
        return
    record.e2e_s = ended - sent
    record.audio_s = stream.samples / SAMPLE_RATE
    record.rtf = record.e2e_s / record.audio_s if record.audio_s > 0 else None
    if stream.first_audible is not None:
        found = stalls(stream.arrivals, stream.first_audible)
        record.underruns, record.stall_s = len(found), sum(s for _, s in found)
        record.first_underrun_audio_s = found[0][0] if found else None


async def run_loadtest_async(settings: LoadtestSettings, transport=None) -> LoadtestResult:
    """The load test in the running event loop. transport: an httpx transport to use
    instead of the network (tests pass an `httpx.MockTransport`)."""
    import httpx

    prompts = load_prompts(settings.prompts)
    horizon = settings.warmup_s + settings.duration_s
    schedule = poisson_schedule(settings.rate, horizon, settings.seed, settings.max_requests)
    pick = random.Random(settings.seed + 1)
    records = [
        RequestRecord(i, t, t >= settings.warmup_s, pick.randrange(len(prompts)) + 1)
        for i, t in enumerate(schedule)
    ]
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    # No pool limit of httpx's own: a request waiting for a connection would be a closed
    # loop in disguise. The concurrency limit, if any, drops arrivals instead.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(settings.timeout_s)
    tasks: list[asyncio.Task] = []
    in_flight: set[asyncio.Task] = set()  # counted from launch, not from first run

    async with httpx.AsyncClient(
        base_url=settings.url, transport=transport, timeout=timeout, limits=limits
    ) as client:
        t0 = time.perf_counter()
        for record in records:
            wait = t0 + record.scheduled_s - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            if settings.concurrency_limit is not None:
                if len(in_flight) >= settings.concurrency_limit:
                    record.outcome = "dropped"
                    continue
            body = request_body(prompts[record.prompt - 1], settings.voice)
            task = asyncio.create_task(_one(client, record, body, settings, t0))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            tasks.append(task)
        if tasks:
            left = t0 + horizon + settings.timeout_s - time.perf_counter()
            _, pending = await asyncio.wait(tasks, timeout=max(left, 0.0))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    for record in records:
        if record.outcome == "pending":
            record.outcome, record.ended_s = "cut", time.perf_counter() - t0
    return LoadtestResult(
        settings={f.name: _plain(getattr(settings, f.name)) for f in fields(settings)},
        started_at=started_at,
        summary=summarize(records, settings),
        requests=records,
    )


def run_loadtest(settings: LoadtestSettings, transport=None) -> LoadtestResult:
    """The load test from synchronous code. Inside a running event loop (a notebook) it runs
    in a thread with a loop of its own, so a notebook cell can call it directly."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run_loadtest_async(settings, transport))
    out: dict = {}

    def work() -> None:
        try:
            out["result"] = asyncio.run(run_loadtest_async(settings, transport))
        except BaseException as err:  # handed back to the caller's thread
            out["error"] = err

    thread = threading.Thread(target=work, name="fastqwen-loadtest")
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["result"]


def summarize(records: list[RequestRecord], settings: LoadtestSettings) -> LoadtestSummary:
    """The measured window's totals and latency distributions."""
    measured = [r for r in records if r.measured]
    sent = [r for r in measured if r.outcome != "dropped"]
    ok = [r for r in measured if r.outcome == "ok"]
    errors: dict[str, int] = {}
    for r in sent:
        if r.outcome != "ok":
            errors[r.outcome] = errors.get(r.outcome, 0) + 1
    audio = sum(r.audio_s or 0.0 for r in ok)
    last_end = max((r.ended_s for r in ok if r.ended_s is not None), default=0.0)
    span = max(settings.duration_s, last_end - settings.warmup_s)
    played = [r for r in ok if r.underruns is not None]
    lates = [r.late_s for r in sent if r.late_s is not None]
    return LoadtestSummary(
        duration_s=settings.duration_s,
        scheduled=len(measured),
        sent=len(sent),
        completed=len(ok),
        errors=dict(sorted(errors.items())),
        error_count=sum(errors.values()),
        dropped=len(measured) - len(sent),
        achieved_rate=len(sent) / settings.duration_s,
        audio_s=audio,
        audio_s_per_s=audio / span,
        silent=sum(r.ttfa_s is None for r in ok),
        underruns=sum(r.underruns for r in played),
        underrun_requests=sum(r.underruns > 0 for r in played),
        stall_s=sum(r.stall_s for r in played),
        max_late_s=max(lates, default=None),
        first_underrun_audio_s=percentiles(
            [r.first_underrun_audio_s for r in played if r.first_underrun_audio_s is not None]
        ),
        ttfb_s=percentiles([r.ttfb_s for r in ok if r.ttfb_s is not None]),
        ttfa_s=percentiles([r.ttfa_s for r in ok if r.ttfa_s is not None]),
        e2e_s=percentiles([r.e2e_s for r in ok if r.e2e_s is not None]),
        rtf=percentiles([r.rtf for r in ok if r.rtf is not None]),
    )


def format_summary(summary: LoadtestSummary) -> str:
    """A short table for the terminal: latencies in milliseconds, then the totals."""

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{1000 * v:.1f}"

    lines = [f"{'':14}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'max ms':>10}{'n':>6}"]
    for name, p in (
        ("ttfb", summary.ttfb_s),
        ("ttfa (audible)", summary.ttfa_s),
        ("e2e", summary.e2e_s),
    ):
        lines.append(
            f"{name:14}{ms(p.p50):>10}{ms(p.p95):>10}{ms(p.p99):>10}{ms(p.max):>10}{p.count:>6}"
        )
    rtf = summary.rtf
    if rtf.count:
        lines.append(
            f"{'rtf':14}{rtf.p50:>10.3f}{rtf.p95:>10.3f}{rtf.p99:>10.3f}"
            f"{rtf.max:>10.3f}{rtf.count:>6}"
        )
    errors = ", ".join(f"{k} {v}" for k, v in summary.errors.items()) or "none"
    lines += [
        f"requests: {summary.sent} sent of {summary.scheduled} scheduled in "
        f"{summary.duration_s:g} s ({summary.achieved_rate:.2f}/s), {summary.completed} "
        f"completed, {summary.dropped} dropped; errors: {errors}",
        f"audio: {summary.audio_s:.1f} s, {summary.audio_s_per_s:.2f} audio-s/s; "
        f"underruns: {summary.underruns} in {summary.underrun_requests} requests "
        f"({summary.stall_s:.3f} s stalled); silent responses: {summary.silent}",
    ]
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    defaults = LoadtestSettings()
    p = sub.add_parser(
        "loadtest",
        help="open-loop load test of a running server (streamed PCM)",
        description="Send streamed-PCM requests to POST /v1/audio/speech at Poisson "
        "arrival times and report time to first byte, time to first audible audio, end to "
        "end, real-time factor, playback underruns and errors. Needs the serve extra (httpx).",
    )
    p.add_argument("--url", default=defaults.url, help=f"server base URL (default {defaults.url})")
    p.add_argument("--rate", type=float, default=defaults.rate, help="mean requests per second")
    p.add_argument(
        "--duration",
        type=float,
        default=defaults.duration_s,
        help=f"measured seconds (default {defaults.duration_s:g})",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=defaults.warmup_s,
        help=f"uncounted seconds first (default {defaults.warmup_s:g})",
    )
    p.add_argument(
        "--prompts",
        type=Path,
        default=None,
        help="JSONL of request bodies (default: the shipped English prompts)",
    )
    p.add_argument(
        "--voice",
        default=defaults.voice,
        help=f"voice for prompts without one (default {defaults.voice}); '' sends none",
    )
    p.add_argument("--max-requests", type=int, default=None, help="cap on requests sent")
    p.add_argument(
        "--timeout",
        type=float,
        default=defaults.timeout_s,
        help=f"seconds per request (default {defaults.timeout_s:g})",
    )
    p.add_argument(
        "--concurrency-limit",
        type=int,
        default=None,
        help="most requests in flight; arrivals beyond it are dropped",
    )
    p.add_argument("--seed", type=int, default=defaults.seed, help="arrivals and prompt order")
    p.add_argument("-o", "--output", type=Path, default=None, help="write the results as JSON")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        import httpx  # noqa: F401
    except ModuleNotFoundError as err:
        raise OSError(
            "fastqwen loadtest needs httpx; install the serve extra: pip install 'fastqwen[serve]'"
        ) from err
    settings = LoadtestSettings(
        url=args.url,
        rate=args.rate,
        duration_s=args.duration,
        warmup_s=args.warmup,
        prompts=args.prompts,
        voice=args.voice or None,
        max_requests=args.max_requests,
        timeout_s=args.timeout,
        concurrency_limit=args.concurrency_limit,
        seed=args.seed,
    )
    result = run_loadtest(settings)
    print(format_summary(result.summary))
    if args.output is not None:
        args.output.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        print(f"results: {args.output}")
    return 0 if result.summary.completed else 1
