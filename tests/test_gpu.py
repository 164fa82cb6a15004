"""CUDA-only checks (skipped on CPU). Their committed run is bench/gpu_check.py's output in
bench/results/<run>/gpu_check_1.7b.json; these are the same checks at tiny size."""

from __future__ import annotations

import contextlib

import pytest
import torch

from fastqwen import EngineConfig, FastQwen3TTS
from fastqwen.config import SamplingParams
from fastqwen.engine.sampling import SamplingMode
from fastqwen.models.sources import load_model
from fastqwen.prompts.builder import VoiceRequest
from fastqwen.verify.parity import compare_codes
from fastqwen.verify.reference import run_reference

pytestmark = pytest.mark.gpu
REQUEST = VoiceRequest(
    "custom_voice", "We met at the corner cafe after work.", "english", speaker="aiden"
)


@pytest.fixture(scope="module")
def cuda_tts():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    return load_model("random:tiny-custom_voice", device="cuda", dtype="float32").tts


@pytest.mark.parametrize("compile_", [False, True], ids=["graph", "graph+compile"])
@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampled"])
def test_graph_codes_equal_reference(cuda_tts, compile_, do_sample):
    torch.backends.cuda.matmul.allow_tf32 = False
    engine = FastQwen3TTS(cuda_tts, EngineConfig(compile=compile_))
    params = SamplingParams(max_new_tokens=61, do_sample=do_sample, subtalker_dosample=do_sample)
    static = engine.generate(REQUEST, params, seed=1)
    dynamic = run_reference(cuda_tts, REQUEST, params, seed=1)
    parity = compare_codes(static, dynamic)
    assert parity.identical, parity.describe()


def test_frame_replay_makes_no_host_sync(cuda_tts):
    engine = FastQwen3TTS(cuda_tts, EngineConfig(compile=False))
    engine.generate(REQUEST, SamplingParams(max_new_tokens=9), seed=0)
    window = next(iter(engine.runner.views.values()))
    replay = engine.runner.step(window, SamplingMode())
    assert replay.__self__ in engine.runner.frame_graphs.values()  # a graph replay, not a call
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            replay()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_codec_graphs_decode_like_eager(cuda_tts, monkeypatch):
    """Streamed chunks are decoded by replaying captured codec graphs; the stream must give
    the same audio as with graphs off, and the graphs must really be replayed."""
    from fastqwen.codec import graphs as codec_graph

    engine = FastQwen3TTS(cuda_tts)
    params = SamplingParams(max_new_tokens=41)

    def stream() -> torch.Tensor:
        chunks = engine.stream(REQUEST, params, seed=2, first_chunk_frames=2, chunk_frames=6)
        return torch.cat([torch.as_tensor(c.audio) for c in chunks])

    graphed = stream()
    counts = codec_graph.graph_counts(engine.codec.decoder)
    assert counts["replays"] > 0 and counts["failed"] == 0, counts
    monkeypatch.setattr(codec_graph, "GRAPH_MAX_WINDOW", 0)
    eager = stream()
    assert graphed.shape == eager.shape
    assert torch.allclose(graphed, eager, atol=1e-5), (graphed - eager).abs().max()


def test_batched_codec_graphs_decode_like_eager(cuda_tts, monkeypatch):
    """Many spans of mixed shapes (first chunks, streamed chunks, result chunks, one window
    too wide to graph), decoded by bucketed graph replays, equal the same spans decoded
    eagerly one at a time: right padding to the buckets changes nothing but rounding."""
    from fastqwen.codec import graphs as codec_graph
    from fastqwen.codec.decoder import codec_decoder

    decoder = codec_decoder(cuda_tts.model.speech_tokenizer)
    # TF32 convs and products round by algorithm, and cuDNN picks algorithms by shape:
    # compare float32 with float32, in graphs captured now (earlier tests captured some
    # shapes with TF32 on, and a replay keeps its capture's kernels)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    codec_graph.drop_graphs(decoder)
    try:
        _check_batched_graphs(decoder, monkeypatch)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
        codec_graph.drop_graphs(decoder)


def _check_batched_graphs(decoder, monkeypatch) -> None:
    from fastqwen.codec import graphs as codec_graph
    from fastqwen.codec.batch import Span, decode_spans

    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, decoder.config.codebook_size, (400, 16), generator=gen)
    spans = [Span(codes[:2], 0, 0), Span(codes[:14], 2, 2)]  # a stream's first two chunks
    spans += [Span(codes[k : k + 130], 118, 10) for k in range(0, 60, 3)]  # 20 chunks of 12
    spans += [Span(codes[:96], 0, 0), Span(codes[:168], 96, 10)]  # result() chunks
    spans += [Span(codes[:340], 330, 10)]  # window past the widest bucket: eager
    before = codec_graph.graph_counts(decoder)
    graphed = decode_spans(decoder, spans)
    after = codec_graph.graph_counts(decoder)
    assert after["replays"] > before["replays"] and after["failed"] == 0, (before, after)
    monkeypatch.setattr(codec_graph, "GRAPH_MAX_WINDOW", 0)
    for span, audio in zip(spans, graphed, strict=True):
        (alone,) = decode_spans(decoder, [span])
        assert audio.shape == alone.shape == (span.frames * 1920,)
        assert abs(audio - alone).max() < 1e-4, abs(audio - alone).max()


def test_the_codec_lanes_decode_alike(cuda_tts):
    """A shared-stream worker decodes a lone first chunk on its side lane and bigger batches
    on the frame loop's stream, and its audio is the separate-stream worker's."""
    import numpy as np

    from fastqwen.codec.batch import SIDE_LANE_FRAMES, CodecWorker, Span
    from fastqwen.codec.decoder import codec_decoder

    decoder = codec_decoder(cuda_tts.model.speech_tokenizer)
    gen = torch.Generator().manual_seed(1)
    codes = torch.randint(0, decoder.config.codebook_size, (200, 16), generator=gen)
    first = [Span(codes[:2], 0, 0)]
    big = [Span(codes[:96], 0, 0), Span(codes[:130], 118, 10)]
    assert sum(s.conv_frames for s in first) <= SIDE_LANE_FRAMES
    assert sum(s.conv_frames for s in big) > SIDE_LANE_FRAMES
    shared, separate = CodecWorker(decoder), CodecWorker(decoder, stream="separate")
    try:
        a = shared.decode(first) + shared.decode(big)
        assert shared.side_batches == 1 and shared.batches == 2
        b = separate.decode(first) + separate.decode(big)
        assert separate.side_batches == separate.batches == 2
    finally:
        shared.close()
        separate.close()
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape and np.abs(x - y).max() < 1e-5, np.abs(x - y).max()


def test_stream_equals_generate_within_codec_rounding():
    """bf16 on CUDA: the same codes, and streamed audio within the codec's own rounding of
    the whole decode (which is large in bf16 for a random-weight codec, and the same for the
    reference decoding a prefix of the codes)."""
    import numpy as np

    from fastqwen.verify.streaming import compare_stream

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    tts = load_model("random:tiny-custom_voice", device="cuda", dtype="bfloat16").tts
    engine = FastQwen3TTS(tts)
    params = SamplingParams(max_new_tokens=41)
    whole = engine.generate(REQUEST, params, seed=3)
    streamed = np.concatenate([c.audio for c in engine.stream(REQUEST, params, seed=3)])
    assert torch.equal(engine.last_results[0].codes, whole.codes)
    check = compare_stream(
        streamed, whole.audio, tts.model.speech_tokenizer, whole.codes.to("cuda")
    )
    print(check.describe())
    assert check.within_bound, check.describe()


@pytest.mark.parametrize("invariant", [False, True], ids=["cublas", "invariant"])
def test_a_mixed_batch_against_solo_runs(cuda_tts, invariant):
    """Each request of a mixed batch (a greedy sub-talker row among sampling ones, so its
    stream is moved back after each replay) against its solo run. With `batch_invariant`
    the codes must be identical; without, the cuBLAS products may round differently per
    batch size, so only the first frame's codebook 0 is checked."""
    config = EngineConfig(max_batch_size=4, batch_invariant=invariant)
    engine = FastQwen3TTS(cuda_tts, config)
    settings = [{}, {"subtalker_dosample": False}, {"do_sample": False}, {"top_p": 0.8}]
    requests = [
        (VoiceRequest("custom_voice", f"Request number {i}.", "english", speaker=s), i)
        for i, s in enumerate(("aiden", "serena", "ryan", "eric"))
    ]
    params = [SamplingParams(max_new_tokens=24, min_new_tokens=24, **kw) for kw in settings]
    solo = [engine.generate(r, p, seed) for (r, seed), p in zip(requests, params, strict=True)]
    handles = engine.submit_many([r for r, _ in requests], params, [s for _, s in requests])
    batched = [h.result() for h in handles]
    engine.close()
    for a, b in zip(batched, solo, strict=True):
        if invariant:
            assert torch.equal(a.codes, b.codes)
        else:
            assert a.codes.shape == b.codes.shape


def test_a_capture_survives_another_thread_decoding():
    """The frame loop captures graphs (new prefill groups, buckets) while the codec thread
    allocates and syncs its own stream: the capture must not be invalidated by it."""
    import threading

    from fastqwen.engine.runner import capture_graph

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    stop = threading.Event()
    errors = []

    def codec_like() -> None:
        stream = torch.cuda.Stream()
        try:
            with torch.cuda.stream(stream):
                while not stop.is_set():
                    # no random numbers: a draw from the default generator while another
                    # thread captures raises in torch whatever the capture mode, and the
                    # codec draws none
                    x = torch.full((4096, 64), 0.5, device="cuda")
                    (x @ x.T).sum().item()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=codec_like)
    thread.start()
    try:
        out = []
        for _ in range(30):
            a = torch.ones(1024, device="cuda")
            graph = capture_graph(lambda a=a: out.append(a * 2), warmup=1)
            graph.replay()
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    torch.cuda.synchronize()
    assert float(out[-1].sum()) == 2048.0


def test_stream_graphs_are_captured_by_the_warm_up(cuda_tts):
    """After `warm_stream_graphs`, a stream's chunks (an ICL-like first chunk after 100
    frames of history included) replay graphs without a new capture."""
    from fastqwen.codec import graphs as codec_graph
    from fastqwen.codec.batch import Span, decode_spans, warm_stream_graphs
    from fastqwen.codec.decoder import codec_decoder

    decoder = codec_decoder(cuda_tts.model.speech_tokenizer)
    held = warm_stream_graphs(decoder)
    counts = codec_graph.graph_counts(decoder)
    # a latents graph per window bucket, conv graphs for the first and later chunks
    assert held >= len(codec_graph.WINDOW_BUCKETS) + 2 and counts["failed"] == 0, counts
    codes = torch.zeros((102, 16), dtype=torch.long)
    for span in (Span(codes[:2], 0, 0), Span(codes, 100, 10), Span(codes[:58], 46, 10)):
        decode_spans(decoder, [span])
    after = codec_graph.graph_counts(decoder)
    assert after["captures"] == counts["captures"] and after["replays"] == counts["replays"] + 3


def test_the_frame_loop_counts_its_gpu_time(cuda_tts):
    """`FrameRunner.gpu_s` grows by the blocks' GPU time: more than nothing, less than the
    generation's wall time."""
    engine = FastQwen3TTS(cuda_tts)
    try:
        engine.generate(REQUEST, SamplingParams(max_new_tokens=9), seed=1)  # graphs captured
        before = engine.runner.gpu_s
        result = engine.generate(REQUEST, SamplingParams(max_new_tokens=25), seed=1)
        spent = engine.runner.gpu_s - before
    finally:
        engine.close()
    assert 0 < spent < result.generate_s, (spent, result.generate_s)


def test_the_loop_waits_for_a_prompt_still_being_written_on_the_callers_stream(cuda_tts):
    """The frame loop runs on its own stream: a prompt whose last writes are still queued
    on the submitting thread's stream (here behind ~0.2 s of GPU spin) is read only after
    them, so the request's codes are those of the same request made at leisure."""
    from fastqwen.prompts.builder import build_talker_prompt

    engine = FastQwen3TTS(cuda_tts)
    params = SamplingParams(max_new_tokens=9)
    try:
        expected = engine.generate(REQUEST, params, seed=4).codes
        prompt = build_talker_prompt(cuda_tts, REQUEST)
        embeds = prompt.inputs_embeds
        saved = embeds.clone()
        caller = torch.cuda.Stream()
        caller.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(caller), torch.inference_mode():
            embeds.zero_()
            torch.cuda._sleep(400_000_000)
            embeds.copy_(saved)
            job = engine.scheduler.submit(prompt, params, 4)
        assert engine.scheduler.stream is not None
        assert torch.cuda.current_stream() != engine.scheduler.stream
        got = torch.cat(list(job.blocks(timeout=60)))
    finally:
        engine.close()
    assert torch.equal(got, expected)


@pytest.mark.parametrize("n", [24_000 * 3 + 1, 1920 * 50, 24_000 * 10 + 961])
def test_reference_codes_graph_replay_equals_qwen_tts_encode(n):
    """ICL reference codes replayed from the captured, padded, masked encoder equal the same
    run eagerly, and the graph is really replayed. Against `speech_tokenizer.encode` they
    are not compared here: cuDNN picks other conv algorithms (TF32 on by default) for
    another length, and at tiny size that moved a few codes on an H200 even in float32
    (float32 therefore defaults to qwen-tts' own encode). The masking itself is checked
    exactly on the CPU (tests/test_reference_codes.py); the 1.7B comparison is
    `bench/reference_codes_check.py`'s (bench/results/)."""
    import numpy as np

    from fastqwen.prompts.reference_codes import ReferenceCodes

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    tokenizer = load_model("random:tiny-base", device="cuda", dtype="float32").tts.model
    tokenizer = tokenizer.speech_tokenizer
    wav = (0.3 * np.random.default_rng(n).standard_normal(n)).astype(np.float32)
    expected = tokenizer.encode([wav], sr=24_000).audio_codes[0]
    assert ReferenceCodes(tokenizer).mode == "exact"  # fp32: the parity default
    codes = ReferenceCodes(tokenizer, mode="graphed")
    eager = ReferenceCodes(tokenizer, mode="padded")
    try:
        first = codes.encode(wav)
        again = codes.encode(wav)
        assert codes.captures == 1 and codes.eager_runs == 0
        padded = eager.encode(wav)
        # two launches before either result: each gets its own codes, not the buffer's last
        pending = [codes.start(wav), codes.start(wav[::-1].copy())]
        assert torch.equal(pending[0](), padded)
        assert torch.equal(pending[1](), eager.encode(wav[::-1].copy()))
    finally:
        codes.close()
        eager.close()
    assert torch.equal(first, padded) and torch.equal(again, padded)
    assert first.shape == expected.shape


def test_prompt_ops_prefill_like_the_reference_ops_in_few_cuda_kernels():
    """On CUDA in bf16 the prompt ops' prefill agrees with the reference ops', and launches
    a fused attention and a third of the kernels (what makes a prefill graph fast)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from torch.profiler import ProfilerActivity, profile

    from fastqwen.engine.step import PROMPT_FUNCTIONS, REFERENCE_FUNCTIONS
    from fastqwen.prompts.builder import build_talker_prompt
    from tests.test_prompt_ops import _prefill

    tts = load_model("random:tiny-custom_voice", device="cuda", dtype="bfloat16").tts
    prompts = [build_talker_prompt(tts, REQUEST).inputs_embeds]
    ref_hidden, ref_kv = _prefill(tts.model, prompts, REFERENCE_FUNCTIONS)
    hidden, kv = _prefill(tts.model, prompts, PROMPT_FUNCTIONS)
    cos = torch.nn.functional.cosine_similarity(hidden[:1].flatten(1), ref_hidden[:1].flatten(1))
    assert float(cos) > 0.999
    assert (kv - ref_kv).abs().amax() <= 3e-2 * ref_kv.abs().amax()

    def kernels(fns) -> list[str]:
        profiles = []

        @contextlib.contextmanager
        def profiled():
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                yield
                torch.cuda.synchronize()
            profiles.append(prof)

        _prefill(tts.model, prompts, fns, around=profiled)
        return [e.name for e in profiles[0].events() if e.device_type.name == "CUDA"]

    reference, prompt = kernels(REFERENCE_FUNCTIONS), kernels(PROMPT_FUNCTIONS)
    assert any("flash" in k.lower() or "fmha" in k.lower() for k in prompt), sorted(set(prompt))
    assert len(prompt) * 2 <= len(reference), (len(prompt), len(reference))


def test_batch_graph_warm_up_captures_what_a_batch_of_streams_replays(cuda_tts):
    """After `warm_batch_graphs`, batches of streamed chunks replay without a capture."""
    from fastqwen.codec import graphs
    from fastqwen.codec.batch import decode_spans, warm_batch_graphs, warm_span
    from fastqwen.codec.decoder import codec_decoder, receptive_field

    decoder = codec_decoder(cuda_tts.model.speech_tokenizer)
    graphs.drop_graphs(decoder)
    held = warm_batch_graphs(decoder, 4)
    conv_context = receptive_field(decoder).conv_frames
    shapes = graphs.streamed_shapes(4, 2, 12, conv_context)
    assert all(graphs.holds(decoder, *shape) for shape in shapes)
    # one latents graph per (rows, window), one conv graph per (rows, conv): not one per shape
    assert held == len({(r, w) for r, w, _ in shapes}) + len({(r, c) for r, _, c in shapes})
    assert held < len(shapes)
    before = graphs.graph_counts(decoder)["captures"]
    spans = [warm_span(w, 22, conv_context) for w in (40, 90, 120)]  # 3 later chunks
    spans += [warm_span(16, 2, conv_context)] * 2  # 2 first chunks
    decode_spans(decoder, spans)
    assert graphs.graph_counts(decoder)["captures"] == before


def test_dynamic_windows_replay_a_longer_window_without_a_compile(cuda_tts):
    """`EngineConfig.dynamic_windows` on CUDA (graphed, compiled, Triton ops): a request
    needing the 512-position window after one on 256 compiles nothing, and fp32 greedy
    codes stay the reference's."""
    from torch._dynamo.utils import counters

    torch.backends.cuda.matmul.allow_tf32 = False
    torch._dynamo.reset()
    engine = FastQwen3TTS(cuda_tts, EngineConfig(max_seq_len=1024, dynamic_windows=True))
    params = SamplingParams(max_new_tokens=20, do_sample=False, subtalker_dosample=False)
    engine.generate(REQUEST, params, seed=1)
    before = counters["stats"]["unique_graphs"]
    longer = SamplingParams(max_new_tokens=300, do_sample=False, subtalker_dosample=False)
    static = engine.generate(REQUEST, longer, seed=1)
    assert counters["stats"]["unique_graphs"] == before
    assert (1, 512) in engine.runner.views
    parity = compare_codes(static, run_reference(cuda_tts, REQUEST, longer, seed=1))
    assert parity.identical, parity.describe()
    torch._dynamo.reset()


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampled"])
def test_uncompiled_kernel_frames_give_the_reference_codes(cuda_tts, do_sample):
    """`ops.KERNELS` (what graphed bfloat16 frames run with compile=False), forced here in
    float32 so the codes can be held to qwen-tts': three requests in one batch (the
    library's products at three rows, `matvec` at one), each frame a graph replay, every
    token sampled by the one-launch kernel."""
    from fastqwen.engine.model import StaticModel
    from fastqwen.engine.ops import KERNELS
    from fastqwen.engine.runner import FrameRunner
    from fastqwen.engine.scheduler import Scheduler
    from fastqwen.prompts.builder import build_talker_prompt

    torch.backends.cuda.matmul.allow_tf32 = False
    config = EngineConfig(compile=False, max_batch_size=3, max_seq_len=512)
    runner = FrameRunner(
        StaticModel.from_qwen_tts(cuda_tts.model, 512, batch=3), config, ops=KERNELS
    )
    assert runner.execution.name == "graphed" and runner.ops is KERNELS
    params = SamplingParams(max_new_tokens=41, do_sample=do_sample, subtalker_dosample=do_sample)
    requests = [
        REQUEST,
        VoiceRequest("custom_voice", "A second voice speaks.", "english", speaker="ryan"),
        VoiceRequest("custom_voice", "And a third, longer still.", "english", speaker="aiden"),
    ]
    scheduler = Scheduler(runner)
    try:
        handles = [
            scheduler.submit(build_talker_prompt(cuda_tts, r), params, 3 + i)
            for i, r in enumerate(requests)
        ]
        codes = [torch.cat(list(h.blocks())).cpu() for h in handles]
    finally:
        scheduler.close()
    assert runner.frame_graphs, "no frame was replayed from a graph"
    for i, (request, got) in enumerate(zip(requests, codes, strict=True)):
        expected = run_reference(cuda_tts, request, params, seed=3 + i).codes.cpu()
        assert got.shape == expected.shape, (i, got.shape, expected.shape)
        diff = (got != expected).nonzero()
        assert not len(diff), f"request {i}: first difference at frame, codebook {diff[0].tolist()}"


def test_warm_up_captures_every_lone_prompt_prefill(cuda_tts):
    """After `warmup()`, a lone request with a longer prompt than the warm-up's replays a
    prefill graph captured at warm-up instead of capturing one while its listener waits."""
    from fastqwen.api import warm_prompt_lengths

    engine = FastQwen3TTS(cuda_tts, EngineConfig(max_batch_size=2, max_seq_len=1024))
    try:
        engine.warmup(frames=2)
        captured = set(engine.runner.prefill_graphs)
        assert {(1, n) for n in warm_prompt_lengths(1024)} <= captured
        text = " ".join(["We met at the corner cafe after work and talked for a while."] * 6)
        request = VoiceRequest("custom_voice", text, "english", speaker="aiden")
        engine.generate(request, SamplingParams(max_new_tokens=5), seed=0)
        assert set(engine.runner.prefill_graphs) == captured
    finally:
        engine.close()
