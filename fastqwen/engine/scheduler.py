"""Continuous batching: one thread owns the frame loop of an engine and serves every request.

Requests are submitted from any thread (`Scheduler.submit`) and wait in a queue. Before
each block of frames the loop admits up to `max_prefill_batch` of them into free slots
(the lowest free slots) and prefills their prompts together, so the running requests
pause for one prefill at most per block. Then
every slot up to the highest busy one runs one block of frames (`FrameRunner.step`, a
graph replay per frame on CUDA), and each request's codes go to its `Job`. A request that
reaches EOS or its frame limit, fails, or is cancelled frees its slot at once.

A request's codes do not depend on its slot, on the batch, or on when it joined: every
op of a frame works row by row, and each slot draws from its own generator, seeded with
the request's seed (see `FrameRunner`). The CPU tests check it against solo runs and the
reference; `bench/batch_check.py` checks it on the GPU.

This is the only generation loop: `FastQwen3TTS.generate` is a batch of one.

On CUDA the loop runs on a stream of its own (`Scheduler.stream`), and the engine's codec
decodes go on it too (`codec.batch.CodecWorker`). Callers build prompts on their own
current stream, and the loop waits for them by event (`Job.ready`). On one stream, every
prompt build's blocking host-to-device copy (token ids) waited for the frames the loop
had queued; the builds take turns (`fastqwen.locking`), so under load requests joined one
block apart, and the batch ran far below its slots.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from fastqwen.config import SamplingParams
from fastqwen.device import synchronize_stream
from fastqwen.engine.loop import LoopStats, first_eos
from fastqwen.engine.runner import FrameRunner
from fastqwen.engine.sampling import SamplingMode
from fastqwen.prompts.builder import TalkerPrompt
from fastqwen.results import GenerationStopped

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.5  # how long the idle loop sleeps between looks at its queue


@dataclass
class _Done:
    """The end of a job's codes: normal (error None), failed or cancelled."""

    error: BaseException | None = None


@dataclass(eq=False)
class Job:
    """One request inside the scheduler; its codes arrive block by block (`blocks`).

    Read it from one thread: `blocks()` yields (k, 16) int64 CPU code blocks until the
    request ends, and raises its error (`GenerationStopped` when cancelled).

    `wake_frames`: the reader is woken once this many frames are waiting (and at the end),
    not at every block. At batch 256 a wake per block and request is 256 threads
    contending for the GIL with the frame loop and the codec thread after every block; a
    reader that decodes 48 frames at a time has nothing to do before 48 are there.
    """

    prompt: TalkerPrompt
    params: SamplingParams
    seed: int
    max_frames: int
    first_block: int | None = None
    stop: threading.Event | None = None  # set by a caller's Stop button: cancels the job
    ready: torch.cuda.Event | None = None  # CUDA: its prompt's tensors are written
    stats: LoopStats = field(default_factory=LoopStats)
    submitted_s: float = field(default_factory=time.perf_counter)
    # frames its slot runs: max_frames, plus one whose codebook-0 token is the one the
    # reference samples after the last frame (is it EOS?), when the cache has room for it
    run_frames: int = 0
    slot: int | None = None
    joined_step: int | None = None  # the scheduler's frame count when it joined
    done_frames: int = 0  # frames run in its slot (EOS overshoot included)
    wake_frames: int = 1  # frames that must be waiting before the reader is woken
    _held: list = field(default_factory=list)  # blocks not handed to the reader yet
    _held_frames: int = 0
    _queue: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    _cancelled: threading.Event = field(default_factory=threading.Event)
    _finished: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Free the slot at the next block boundary; `blocks()` then raises GenerationStopped."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set() or (self.stop is not None and self.stop.is_set())

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def blocks(self, timeout: float | None = None) -> Iterator[torch.Tensor]:
        """Code blocks as they are handed over (`wake_frames` at a time); timeout: seconds
        to wait for each hand-over (queue.Empty past it)."""
        while True:
            item = self._queue.get(timeout=timeout)
            if isinstance(item, _Done):
                if item.error is not None:
                    raise item.error
                return
            yield from item

    def _put(self, codes: torch.Tensor) -> None:
        self._held.append(codes)
        self._held_frames += int(codes.shape[0])
        if self._held_frames >= self.wake_frames:
            self._hand_over()

    def _hand_over(self) -> None:
        if self._held:
            held, self._held, self._held_frames = self._held, [], 0
            self._queue.put(held)

    def _end(self, error: BaseException | None = None) -> None:
        if not self._finished.is_set():
            self._finished.set()
            self._hand_over()
            self._queue.put(_Done(error))


@dataclass
class LoopTimes:
    """Where the loop thread's time goes, in seconds since the scheduler started: admitting
    and prefilling joiners, running blocks of frames (graph replays and the codes' copy to
    the host), and handing each block's codes to its requests. What a round's wall time
    has beyond their sum is the loop waiting (for the GIL, or idle)."""

    admit_s: float = 0.0
    frames_s: float = 0.0
    deliver_s: float = 0.0
    blocks: int = 0  # blocks of frames run (one host round trip each)
    cut_blocks: int = 0  # blocks ended early for a request waiting to join (`admit_in_block`)
    # admit_s in parts: loading joiners' slots (host work), and their prefill up to the
    # stream sync after it (which also waits for whatever was queued on the stream before)
    load_s: float = 0.0
    prefill_s: float = 0.0
    prefills: int = 0  # prefill groups run
    joined: int = 0  # requests admitted


class Scheduler:
    """Owns the frame loop of one `FrameRunner`, in a thread of its own (started on the
    first submit)."""

    def __init__(self, runner: FrameRunner, name: str = "fastqwen-scheduler"):
        self.runner = runner
        self.name = name
        self._pending: list[Job] = []
        self._slots: list[Job | None] = [None] * runner.max_batch_size
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._paused = 0
        self._loop_lock = threading.Lock()  # held while the loop touches the runner
        # CUDA: the stream the loop runs on (frames, prefills; the codec's decodes too)
        cuda = runner.device.type == "cuda"
        self.stream = torch.cuda.Stream(runner.device) if cuda else None
        self.steps = 0  # frame steps run so far (each serves every busy slot)
        self.peak_active = 0  # the most requests that ran together
        self.times = LoopTimes()

    # ---- submitting ---------------------------------------------------------------------
    def submit(
        self,
        prompt: TalkerPrompt,
        params: SamplingParams,
        seed: int,
        *,
        first_block: int | None = None,
        stop: threading.Event | None = None,
    ) -> Job:
        """Queue a request; raises at once (ValueError naming the limit) if it cannot fit
        a slot, so a bad request never reaches the loop."""
        return self.submit_many([self.job(prompt, params, seed, first_block, stop)])[0]

    def job(
        self,
        prompt: TalkerPrompt,
        params: SamplingParams,
        seed: int,
        first_block: int | None = None,
        stop: threading.Event | None = None,
    ) -> Job:
        """A request checked against the slot limits (ValueError naming the limit), ready
        for `submit_many`."""
        max_frames = self.runner.check(prompt, params)
        job = Job(prompt, params, seed, max_frames, first_block=first_block, stop=stop)
        fits = prompt.prompt_len + max_frames + 1 <= self.runner.config.max_seq_len
        job.run_frames = max_frames + 1 if fits else max_frames
        return job

    def submit_many(self, jobs: list[Job]) -> list[Job]:
        """Queue jobs together: the loop admits them at the same frame (as slots allow).
        On CUDA their prompts were made on the caller's current stream: the loop's stream
        waits for what is queued there now before it reads them."""
        if self.stream is not None:
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.runner.device))
            for job in jobs:
                job.ready = ready
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine's scheduler is closed")
            self._pending.extend(jobs)
            self._start()
            self._cond.notify_all()
        return jobs

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    @property
    def active(self) -> int:
        """Requests in slots now."""
        return sum(job is not None for job in self._slots)

    @property
    def queued(self) -> int:
        """Requests waiting for a slot."""
        return len(self._pending)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until no request runs or waits and the loop is between iterations (a
        cancelled request's block has ended): a benchmark's next request then meets an
        idle engine. False if that took longer than `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.active or self._pending:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.0005)
        with self._loop_lock:
            return True

    def close(self) -> None:
        """Cancel everything and stop the loop thread."""
        with self._cond:
            self._closed = True
            for job in self._pending:
                job._end(GenerationStopped(0))
            self._pending.clear()
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def exclusive(self):
        """A context in which the caller alone uses the runner (parity checks run their own
        frames on slot 0): new requests wait, running ones finish first."""
        return _Exclusive(self)

    # ---- the loop -----------------------------------------------------------------------
    def _run(self) -> None:
        on_stream = torch.cuda.stream(self.stream) if self.stream is not None else nullcontext()
        with torch.inference_mode(), on_stream:
            while True:
                with self._cond:
                    while (
                        not self._closed and not self.active and (self._paused or not self._pending)
                    ):
                        self._cond.wait(IDLE_WAIT_S)
                    if self._closed:
                        self._fail_all(GenerationStopped(0))
                        return
                with self._loop_lock:
                    try:
                        self._iteration()
                    except Exception as error:  # a failed step fails its batch, not the loop
                        log.exception("frame step failed; failing the requests in it")
                        self._fail_all(error)

    def _iteration(self) -> None:
        t_admit = time.perf_counter()
        self._drop_cancelled()  # first: a joiner then takes a cancelled request's slot
        self._admit()
        self.times.admit_s += time.perf_counter() - t_admit
        jobs = [(slot, job) for slot, job in enumerate(self._slots) if job is not None]
        if not jobs:
            return
        runner = self.runner
        rows = runner.bucket(jobs[-1][0] + 1)
        runner.state.park([s for s in range(rows) if self._slots[s] is None])
        needed = max(job.prompt.prompt_len + job.run_frames for _, job in jobs)
        m = runner.view(rows, needed)
        step = runner.step(m, SamplingMode.union([job.params for _, job in jobs]))
        n = self._block_frames(jobs, m.talker_cache.max_len)
        self.peak_active = max(self.peak_active, len(jobs))
        t0 = time.perf_counter()
        codes = runner.run_block(step, rows, n, *self._early_end(jobs))
        t1 = time.perf_counter()
        elapsed = t1 - t0
        self.times.frames_s += elapsed
        self.times.blocks += 1
        self.times.cut_blocks += codes.shape[1] < n
        n = int(codes.shape[1])
        self.steps += n
        ends = first_eos(codes, self.runner.model.eos_id)
        at_limit = [
            (slot, job)
            for slot, job in jobs
            if self._deliver(slot, job, codes[slot], ends[slot], elapsed)
        ]
        finals = runner.final_tokens_are_eos([(slot, job.params) for slot, job in at_limit])
        for (slot, job), eos in zip(at_limit, finals, strict=True):
            job.stats.eos_reached = eos
            self._free(slot)
            job._end()
        self.times.deliver_s += time.perf_counter() - t1

    def _early_end(self, jobs: list[tuple[int, Job]]) -> tuple:
        """(stop, min_frames) for `run_block`: with `admit_in_block` set, the block ends at
        the first frame boundary after a request arrives while a slot is free (so it waits
        a frame or two to join instead of up to `sync_every`: its time to first audio), or
        after a request in it is cancelled (its slot is freed at once, and a lone cancelled
        stream stops using the GPU). Never before a joiner's first chunk is complete: that
        would delay its first audio."""
        if not self.runner.config.admit_in_block:
            return None, 1
        room = any(s is None for s in self._slots)
        firsts = [job.first_block for _, job in jobs if job.done_frames == 0 and job.first_block]

        def stop() -> bool:
            if room and self._pending and not self._paused:
                return True
            return any(job.cancelled for _, job in jobs)

        return stop, min(firsts, default=1)

    def _block_frames(self, jobs: list[tuple[int, Job]], window: int) -> int:
        """Frames in the next block: `sync_every`, or a joiner's `first_block` (its first
        audio waits for this block's end), and never past a slot's cache window.

        A block is not cut where a request reaches its frame limit, unless every request
        has: its slot runs on to the block's end and those frames are dropped (`_deliver`),
        as after an EOS. Cut wherever any request ends, a batch of requests that joined at
        different frames pays a host round trip, a hand-over and an admission every few
        frames instead of every `sync_every`. A request with no room for its extra frame
        (`Job.run_frames == max_frames`) fills its window, so the window stops it exactly
        at its limit, where `final_tokens_are_eos` reads its state."""
        n = self.runner.sync_every
        for _, job in jobs:
            if job.done_frames == 0 and job.first_block:
                n = min(n, job.first_block)
            n = min(n, window - job.prompt.prompt_len - job.done_frames)
        # no frame that no request needs: requests that run in step end the block together
        return min(n, max(job.run_frames - job.done_frames for _, job in jobs))

    def _deliver(self, slot: int, job: Job, codes: torch.Tensor, end: int, elapsed: float) -> bool:
        """Hand a slot's block to its job, cut before its first EOS (frame `end`) and at its
        frame limit; a job that reached EOS or ran its extra frame (`Job.run_frames`) ends
        here. True if it reached its limit without room for the extra frame: the caller
        then ends it once it knows the token the reference would have drawn next."""
        real = min(codes.shape[0], job.max_frames - job.done_frames)  # frames it keeps
        eos = end < real
        block = codes[:end] if eos else codes[:real]
        stats = job.stats
        stats.block_times_s.append(elapsed)
        stats.block_frames.append(int(block.shape[0]))
        stats.frames += int(block.shape[0])
        stats.eos_reached = eos
        job.done_frames += int(codes.shape[0])
        if block.shape[0]:
            job._put(block)
        if not eos and job.done_frames >= job.run_frames:
            if job.run_frames == job.max_frames:
                return True
            # The block's last frame is the extra one (blocks stop at `run_frames`): its
            # codebook-0 token is the reference's next draw. EOS there means end == real.
            stats.eos_reached = end == real
            eos = True
        if eos:
            self._free(slot)
            job._end()
        return False

    def _admit(self) -> None:
        """Move up to `max_prefill_batch` queued requests into free slots and prefill them
        together: the running requests pause for one prefill per block at most, and the
        rest of the queue joins at the next blocks."""
        limit = self.runner.config.max_prefill_batch
        with self._cond:
            if self._paused:
                return
            free = [s for s, job in enumerate(self._slots) if job is None]
            joining: list[tuple[int, Job]] = []
            while self._pending and free and len(joining) < limit:
                job = self._pending.pop(0)
                if job.cancelled:
                    job._end(GenerationStopped(0))
                    continue
                joining.append((free.pop(0), job))
        t_load = time.perf_counter()
        waited: set[int] = set()
        for _, job in joining:
            if job.ready is not None and id(job.ready) not in waited:
                waited.add(id(job.ready))  # jobs submitted together share one event
                self.stream.wait_event(job.ready)
        ready = self._load(joining)
        t0 = time.perf_counter()
        self.times.load_s += t0 - t_load
        if not ready:
            return
        running = any(job is not None for job in self._slots)  # joiners take slots below
        try:
            self.runner.prefill(
                [s for s, _ in ready], [j.prompt for _, j in ready], capture=not running
            )
            synchronize_stream(self.runner.device)
        except Exception as error:
            for _, job in ready:
                job._end(error)
            return
        elapsed = time.perf_counter() - t0
        self.times.prefill_s += elapsed
        self.times.prefills += 1
        self.times.joined += len(ready)
        for slot, job in ready:
            job.slot = slot
            job.joined_step = self.steps
            job.stats.prefill_s = elapsed
            self._slots[slot] = job

    def _load(self, joining: list[tuple[int, Job]]) -> list[tuple[int, Job]]:
        """Load the joiners' slots together; if that fails, one by one, so that only the
        request whose load fails ends (with its error). Returns the loaded ones."""
        try:
            self.runner.load_many([(s, j.prompt, j.params, j.seed) for s, j in joining])
            return joining
        except Exception:  # noqa: BLE001 - found below, request by request
            log.debug("loading %d joiners together failed; loading them one by one", len(joining))
        ready = []
        for slot, job in joining:
            try:
                self.runner.load(slot, job.prompt, job.params, job.seed)
            except Exception as error:  # this request alone fails
                job._end(error)
                continue
            ready.append((slot, job))
        return ready

    def _drop_cancelled(self) -> None:
        for slot, job in enumerate(self._slots):
            if job is not None and job.cancelled:
                self._free(slot)
                job._end(GenerationStopped(job.stats.frames))

    def _free(self, slot: int) -> None:
        with self._cond:
            self._slots[slot] = None
            self._cond.notify_all()

    def _fail_all(self, error: BaseException) -> None:
        for slot, job in enumerate(self._slots):
            if job is not None:
                self._free(slot)
                job._end(error)


class _Exclusive:
    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler

    def __enter__(self) -> FrameRunner:
        s = self.scheduler
        with s._cond:
            s._paused += 1
            while s.active:
                s._cond.wait(IDLE_WAIT_S)
        s._loop_lock.acquire()
        if s.stream is not None:  # the caller's stream goes on after the loop's work
            torch.cuda.current_stream(s.runner.device).wait_stream(s.stream)
        return s.runner

    def __exit__(self, *exc) -> None:
        s = self.scheduler
        if s.stream is not None:  # and the loop's after the caller's
            s.stream.wait_stream(torch.cuda.current_stream(s.runner.device))
        s._loop_lock.release()
        with s._cond:
            s._paused -= 1
            s._cond.notify_all()
