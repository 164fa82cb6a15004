"""The HTTP app: one loaded engine behind `/v1/audio/speech`, `/v1/models`,
`/v1/audio/voices` and `/health`.

The engine batches by itself (its scheduler admits requests between blocks of frames), so
the app only prepares requests, bounds how many wait, and moves audio out:

- Admission: once the engine's running and queued requests (plus those being prepared)
  reach `max_batch_size + max_queue`, a request gets 429 with Retry-After at once, rather
  than waiting in an unbounded queue until its client gives up.
- Streaming: chunks are sent as the handle decodes them; a client that goes away cancels
  its request, so its slot serves the next one within a block of frames.
- Readiness: `/health` says 200 only after one short generation has run, so a load
  balancer never sends traffic to a server still compiling or capturing graphs.
- Failure stays in the request: bad input is a 400 naming the field, an overrun a 504,
  anything else a logged 500; the server itself keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from fastqwen.config import SamplingParams
from fastqwen.results import GenerationStopped
from fastqwen.tools.serve import audio, schema
from fastqwen.tools.serve.settings import ServeSettings
from fastqwen.tools.serve.voices import TASK_TYPES, CloneCache, read_reference

log = logging.getLogger(__name__)

WARMUP_TEXT = "Hello."
WARMUP_TOKENS = 8  # a few frames: enough to run prefill, frame steps and the stream codec


class ApiError(Exception):
    """An HTTP error in the OpenAI error shape: `{"error": {"message", "type", "param"}}`."""

    def __init__(self, status: int, message: str, param: str | None = None, retry_after=None):
        super().__init__(message)
        self.status = status
        self.param = param
        self.retry_after = retry_after


class Server:
    """The state shared by the routes: the engine, readiness, admission, the clone cache."""

    def __init__(self, engine, settings: ServeSettings):
        self.engine = engine
        self.settings = settings
        self.clone_cache = CloneCache(engine, settings.clone_cache_size)
        self.ready = threading.Event()
        self.failure: str | None = None  # why warm-up failed
        self.preparing = 0  # admitted requests not yet in the scheduler
        self.rejected = 0  # 429s so far
        self._lock = threading.Lock()
        # Reading a handle blocks a thread per request (a stream waits for its next chunk,
        # a whole request for its result). asyncio's default pool has only cpu_count + 4
        # threads, which would make admitted requests wait for a thread, not for the GPU.
        self.executor = ThreadPoolExecutor(
            max_workers=self.capacity + 4, thread_name_prefix="fastqwen-serve"
        )

    async def run(self, fn, *args):
        """`fn(*args)` in the server's thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args))

    @property
    def capacity(self) -> int:
        return self.engine.config.max_batch_size + self.settings.max_queue

    def load(self) -> int:
        """Requests in slots, waiting for one, or being prepared."""
        sched = self.engine.scheduler
        return sched.active + sched.queued + self.preparing

    def admit(self) -> None:
        with self._lock:
            if self.load() >= self.capacity:
                self.rejected += 1
                raise ApiError(
                    429,
                    f"server busy: {self.capacity} requests running or queued "
                    "(max_batch_size + max_queue); retry later",
                    retry_after=self.settings.retry_after_s,
                )
            self.preparing += 1

    def release(self) -> None:
        with self._lock:
            self.preparing -= 1

    def warm_up(self) -> None:
        """The engine's warm-up (every batch bucket), then two short generations in the
        served mode, streamed and whole (the two codec paths); then ready, or the failure,
        which `/health` reports."""
        t0 = time.perf_counter()
        try:
            if self.settings.warmup:
                self.engine.warmup()  # every batch bucket's graphs, before traffic
                request = self.engine.warmup_request()
                for streaming in (True, False):
                    handle = self.engine.submit(
                        request,
                        SamplingParams(max_new_tokens=WARMUP_TOKENS),
                        seed=0,
                        first_chunk_frames=self.settings.first_chunk_frames,
                        chunk_frames=self.settings.chunk_frames,
                        streaming=streaming,
                    )
                    if streaming:
                        for _ in handle:
                            pass
                    else:
                        handle.result()
        except Exception as err:  # reported by /health; the server stays up to say so
            log.exception("warm-up failed")
            self.failure = f"warm-up failed: {err}"
            return
        log.info("ready: warmed up in %.1f s", time.perf_counter() - t0)
        self.ready.set()

    def submit(self, body, plan: schema.Plan):
        """Build the voice and the talker prompt and queue the request (in a worker thread:
        encoding a reference and building a prompt run model code)."""
        clone_prompt = None
        if plan.mode == "voice_clone":
            data = read_reference(body.ref_audio, self.settings.ref_audio_dir)
            clone_prompt = self.clone_cache.get(data, body.ref_text, bool(body.x_vector_only_mode))
        return self.engine.submit(
            schema.voice_request(plan, body.input, clone_prompt),
            plan.params,
            body.seed,
            first_chunk_frames=self.settings.first_chunk_frames,
            chunk_frames=self.settings.chunk_frames,
            streaming=plan.stream,
        )


def create_app(engine, settings: ServeSettings | None = None) -> FastAPI:
    """The app around an already loaded engine (which the caller closes).

    Warm-up starts in a thread when the app starts, so `/health` answers 503 meanwhile.
    """
    settings = settings or ServeSettings()
    server = Server(engine, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        warm = threading.Thread(target=server.warm_up, name="fastqwen-warmup", daemon=True)
        warm.start()
        yield
        server.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="fastqwen", lifespan=lifespan)
    app.state.server = server
    kind = engine.model_kind
    task_type = TASK_TYPES[kind]

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
        kinds = {429: "rate_limit_error", 503: "server_unavailable", 504: "timeout"}
        content = {
            "error": {
                "message": str(err),
                "type": kinds.get(err.status, "invalid_request_error"),
                "param": err.param,
                "code": err.status,
            }
        }
        return JSONResponse(content, status_code=err.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = err.errors()
        first = problems[0] if problems else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        message = f"{param}: {first.get('msg', 'invalid request')}" if param else "invalid body"
        content = {
            "error": {"message": message, "type": "invalid_request_error", "param": param},
            "detail": [{k: v for k, v in p.items() if k != "ctx"} for p in problems],
        }
        return JSONResponse(content, status_code=422)

    @app.exception_handler(Exception)
    async def crashed(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error serving %s", request.url.path)
        content = {"error": {"message": f"internal error: {err}", "type": "server_error"}}
        return JSONResponse(content, status_code=500)

    @app.get("/health")
    async def health() -> JSONResponse:
        if server.ready.is_set():
            return JSONResponse({"status": "ok"})
        status = server.failure or "warming up"
        return JSONResponse({"status": status}, status_code=503)

    @app.get("/v1/models")
    async def models() -> dict:
        return {
            "object": "list",
            "data": [
                {
                    "id": settings.model_name,
                    "object": "model",
                    "owned_by": "fastqwen",
                    "task_type": task_type,
                    "sample_rate": engine.sample_rate,
                }
            ],
        }

    @app.get("/v1/audio/voices")
    async def voices() -> dict:
        speakers = engine.get_supported_speakers() if kind == "custom_voice" else None
        return {
            "task_type": task_type,
            "voices": sorted(speakers) if speakers else ["default"],
            "languages": sorted(engine.get_supported_languages() or ["auto"]),
        }

    @app.post("/v1/audio/speech")
    async def speech(body: schema.SpeechRequest) -> Response:
        rid = uuid.uuid4().hex[:12]
        try:
            return await _speech(body, rid)
        except ApiError as err:  # refused before any audio: its log line says why
            if err.status != 504:  # a timeout has logged its own line
                log.info("request %s: refused, %d %s", rid, err.status, err)
            raise

    async def _speech(body, rid: str) -> Response:
        if not server.ready.is_set():
            raise ApiError(503, server.failure or "warming up", retry_after=settings.retry_after_s)
        try:
            plan = schema.check_request(body, kind, (settings.model_name,))
        except schema.FieldError as err:
            raise ApiError(400, str(err), err.param) from err
        server.admit()
        try:
            handle = await server.run(server.submit, body, plan)
        except schema.FieldError as err:
            raise ApiError(400, str(err), err.param) from err
        except ValueError as err:  # the engine names the bad value
            raise ApiError(400, str(err)) from err
        finally:
            server.release()
        headers = {"X-Request-Id": rid, "X-Sample-Rate": str(engine.sample_rate)}
        media_type = audio.MEDIA_TYPES[plan.response_format]
        if plan.stream:
            chunks = _stream(server, handle, plan.response_format, rid)
            return StreamingResponse(chunks, media_type=media_type, headers=headers)
        result = await _whole(server, handle, rid)
        body_bytes = audio.encode(result.audio, result.sample_rate, plan.response_format)
        return Response(body_bytes, media_type=media_type, headers=headers)

    return app


async def _whole(server: Server, handle, rid: str):
    """The whole result; past the timeout (or if the client goes) the request is cancelled."""
    timeout_s = server.settings.request_timeout_s
    try:
        result = await asyncio.wait_for(server.run(handle.result), timeout_s)
    except asyncio.TimeoutError as err:
        handle.cancel()
        _log_request(rid, handle, None, "timed out")
        raise ApiError(504, f"request took longer than {timeout_s} s and was cancelled") from err
    except BaseException:
        handle.cancel()
        raise
    _log_request(rid, handle, None, "ok")
    return result


_END = object()


async def _stream(server: Server, handle, fmt: str, rid: str):
    """Yield the response body chunk by chunk as the handle decodes audio. However it ends
    (finished, client gone, timed out, failed), an unfinished request is cancelled."""
    chunks = iter(handle)
    timeout_s = server.settings.request_timeout_s
    deadline = None if timeout_s is None else time.perf_counter() + timeout_s
    first_audio_s: float | None = None
    outcome = "client disconnected"
    try:
        if fmt == "wav":
            yield audio.wav_header(handle.engine.sample_rate)
        while True:
            left = None if deadline is None else max(deadline - time.perf_counter(), 0.0)
            try:
                chunk = await asyncio.wait_for(server.run(next, chunks, _END), left)
            except asyncio.TimeoutError:
                outcome = f"timed out after {timeout_s} s; stream cut"
                return
            except GenerationStopped:
                outcome = "cancelled"
                return
            except Exception as err:  # the status is already sent: end the stream, log why
                log.exception("request %s failed mid-stream", rid)
                outcome = f"failed: {err}"
                return
            if chunk is _END:
                outcome = "ok"
                return
            if first_audio_s is None:
                first_audio_s = time.perf_counter() - handle.submitted_s
            yield audio.pcm16(chunk.audio)
    finally:
        if outcome != "ok":
            handle.cancel()  # the reading thread sees it at the next block and ends
        _log_request(rid, handle, first_audio_s, outcome)


def _log_request(rid: str, handle, first_audio_s: float | None, outcome: str) -> None:
    total = time.perf_counter() - handle.submitted_s
    ttfa = "-" if first_audio_s is None else f"{1000 * first_audio_s:.0f} ms"
    log.info(
        "request %s: %s, %d frames, first audio %s, total %.0f ms",
        rid,
        outcome,
        handle.stats.frames,
        ttfa,
        1000 * total,
    )
