"""The engine seam: how `FrameRunner` decides to run frames, and the op sets it chooses from.

The CUDA choices are checked without a GPU: the decision is plain logic on a device, and
the ops of the compiled CUDA path are traced on fake CUDA tensors, which shows which
kernels a layer launches without running one.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

from fastqwen import EngineConfig, FastQwen3TTS
from fastqwen.config import SamplingParams
from fastqwen.engine.layers import Positions, decoder_layer, mlp_down
from fastqwen.engine.model import LayerDims, LayerWeights, StaticModel
from fastqwen.engine.ops import FOLD_MAX_WEIGHT, FUSED, REFERENCE, TRITON
from fastqwen.engine.runner import Execution, FrameRunner, default_ops
from fastqwen.engine.sampling import SamplingTensors
from fastqwen.engine.scheduler import Scheduler
from fastqwen.engine.step import talker_token
from fastqwen.prompts.builder import VoiceRequest, build_talker_prompt
from fastqwen.verify.reference import run_reference

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
REQUEST = VoiceRequest("custom_voice", "The runner decides once.", "english", speaker="ryan")
needs_triton = pytest.mark.skipif(TRITON is None, reason="needs triton")


@pytest.mark.parametrize(
    "config,device,name",
    [
        (EngineConfig(), CPU, "eager"),
        (EngineConfig(compile=True), CPU, "compiled"),  # cuda_graph is ignored on the CPU
        (EngineConfig(compile=True, cuda_graph=False), CPU, "compiled"),
        (EngineConfig(), CUDA, "graphed"),
        (EngineConfig(compile=True), CUDA, "graphed+compiled"),
        (EngineConfig(compile=False), CUDA, "graphed"),
        (EngineConfig(cuda_graph=False), CUDA, "eager"),
        (EngineConfig(compile=True, cuda_graph=False), CUDA, "compiled"),
    ],
)
def test_execution_is_chosen_from_config_and_device(config, device, name):
    execution = Execution.choose(config, device)
    assert execution.name == name
    ops = default_ops(execution, device)
    if not execution.compiled:
        assert ops is REFERENCE
    elif device.type == "cuda" and TRITON is not None:
        assert ops is TRITON
    else:
        assert ops is FUSED


def test_compile_without_graphs_chooses_compiled_functions_on_cpu(tiny_model):
    tts = tiny_model("custom_voice").tts
    eager = FastQwen3TTS(tts)
    assert eager.runner.execution.name == "eager" and not eager.runner.functions.compiled
    assert eager.runner.ops is REFERENCE
    compiled = FastQwen3TTS(tts, EngineConfig(compile=True, cuda_graph=False))
    assert compiled.runner.execution.name == "compiled" and compiled.runner.functions.compiled
    assert compiled.runner.ops is FUSED
    assert not compiled.runner.frame_graphs and not compiled.runner.prefill_graphs


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampled"])
def test_fused_ops_run_eagerly_on_cpu_give_the_reference_codes(tiny_model, do_sample):
    """The fused forms of every op (multiply-and-sum products, folded norms, counted top-k),
    chosen through the runner's constructor and run eagerly, against qwen-tts."""
    tts = tiny_model("custom_voice").tts
    config = EngineConfig(max_seq_len=256, max_batch_size=2)
    runner = FrameRunner(StaticModel.from_qwen_tts(tts.model, 256, batch=2), config, ops=FUSED)
    assert runner.ops is FUSED and runner.execution.name == "eager"
    params = SamplingParams(max_new_tokens=31, do_sample=do_sample, subtalker_dosample=do_sample)
    prompt = build_talker_prompt(tts, REQUEST)
    scheduler = Scheduler(runner)
    try:
        codes = torch.cat(list(scheduler.submit(prompt, params, 5).blocks()))
    finally:
        scheduler.close()
    expected = run_reference(tts, REQUEST, params, seed=5).codes
    assert codes.shape == expected.shape == (30, 16)
    diff = (codes != expected).nonzero()
    assert not len(diff), f"first difference at frame, codebook {diff[0].tolist()}"


def custom_ops(fn, *args) -> list[str]:
    """The fastqwen kernels `fn(*args)` launches, in order, traced with fake tensors."""
    graph = make_fx(fn)(*args).graph
    names = [str(n.target) for n in graph.nodes if n.op == "call_function"]
    return [n.split(".")[1] for n in names if n.startswith("fastqwen.")]


def _r(*shape):
    return torch.empty(*shape, device="cuda", dtype=torch.bfloat16)


def fake_layer(dims: LayerDims, hidden: int, inter: int, S: int, T: int):
    """layer(x, kv): one decoder layer (both halves) on the Triton op set for T bf16 tokens
    over a window of S positions, with weights made on fake CUDA tensors (call it inside
    the same `FakeTensorMode`)."""
    hq, hkv, d = dims.num_heads, dims.num_kv_heads, dims.head_dim
    w = LayerWeights(
        _r(hidden), _r((hq + 2 * hkv) * d, hidden), _r(d), _r(d), _r(hidden, hq * d), _r(hidden),
        _r(2 * inter, hidden), _r(hidden, inter),
    )  # fmt: skip
    mask = torch.ones(1, 1, dims.rep * T, S, dtype=torch.bool, device="cuda")
    at = Positions(torch.arange(T, device="cuda").view(1, T), _r(1, T, d), _r(1, T, d), mask)

    def layer(x: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        y, h = decoder_layer(x, kv, at, w, dims, TRITON)
        return mlp_down(y, h, w.down, TRITON)

    return layer


def layer_kernels(dims: LayerDims, hidden: int, inter: int, S: int, T: int) -> list[str]:
    """The kernels one decoder layer (both halves) launches with the Triton op set, for T
    bf16 tokens over a window of S positions, traced on fake CUDA tensors (no GPU)."""
    with FakeTensorMode():
        layer = fake_layer(dims, hidden, inter, S, T)
        return custom_ops(layer, _r(1, T, hidden), _r(2, 1, dims.num_kv_heads, S, dims.head_dim))


@needs_triton
@pytest.mark.parametrize("batch", [1, 2, 3, 4])
@pytest.mark.parametrize("tokens", [1, 2])
def test_triton_layer_keeps_every_batch_row(batch, tokens):
    """A decoder layer of B rows of T tokens gives B rows of T tokens on the Triton op set,
    traced on fake CUDA tensors. B = 2, T = 1 is the two rows the matvec kernel also takes
    as one request's two-token pass: given as (2, 1, K), it once returned one row."""
    dims, hidden, inter, S = LayerDims(16, 8, 128, 1e-6), 1024, 3072, 16
    with FakeTensorMode():
        layer = fake_layer(dims, hidden, inter, S, tokens)
        kv = _r(2, batch, dims.num_kv_heads, S, dims.head_dim)
        assert tuple(layer(_r(batch, tokens, hidden), kv).shape) == (batch, tokens, hidden)


@needs_triton
@pytest.mark.parametrize(
    "hidden,inter,S", [(2048, 6144, 256), (1024, 3072, 16)], ids=["talker-1.7b", "predictor"]
)
def test_triton_ops_launch_the_kernels_for_one_or_two_tokens(hidden, inter, S):
    dims = LayerDims(16, 8, 128, 1e-6)
    five = ["matvec", "decode_attention", "matvec", "matvec", "matvec"]
    assert layer_kernels(dims, hidden, inter, S, T=1) == five
    assert layer_kernels(dims, hidden, inter, S, T=2) == five
    assert layer_kernels(dims, hidden, inter, S, T=3) == []  # longer passes: the fused forms


@needs_triton
@pytest.mark.parametrize("do_sample", [False, True])
def test_triton_ops_take_top_k_from_the_kernel_when_sampling(do_sample):
    with FakeTensorMode():
        s = SamplingTensors("cuda")
        hidden = torch.empty(1, 1, 2048, device="cuda", dtype=torch.bfloat16)
        head = torch.empty(3072, 2048, device="cuda", dtype=torch.bfloat16)
        flags = torch.zeros(1, 3072, dtype=torch.bool, device="cuda")
        step = torch.zeros((1,), dtype=torch.long, device="cuda")

        def token(hidden, head):
            noise = torch.ones(1, 3072, device="cuda") if do_sample else None
            args = (s, flags, flags, 2150, step, do_sample, False)
            return talker_token(hidden, head, noise, *args, ops=TRITON)

        assert custom_ops(token, hidden, head) == (["top_k_mask"] if do_sample else [])


@pytest.mark.parametrize("rows,folds", [(2048, True), (FOLD_MAX_WEIGHT // 1024 + 1, False)])
def test_fused_norm_linear_folds_the_norm_only_for_small_weights(rows, folds):
    """Folded, the norm's mean square is a sum inside the product; otherwise rms_norm's mean."""
    with FakeTensorMode():
        x = torch.empty(1, 1, 1024, device="cuda", dtype=torch.bfloat16)
        norm = torch.empty(1024, device="cuda", dtype=torch.bfloat16)
        w = torch.empty(rows, 1024, device="cuda", dtype=torch.bfloat16)
        graph = make_fx(lambda x, w: FUSED.norm_linear(x, norm, w, 1e-6))(x, w).graph
    targets = {str(n.target) for n in graph.nodes if n.op == "call_function"}
    assert ("aten.mean.dim" not in targets) == folds, sorted(targets)


def test_each_compiled_function_keeps_its_own_graph_cache():
    """The six frame functions are compiled one by one: compiling their `partial`s gave them
    one shared Dynamo frame, whose recompile limit a second engine or dtype then exhausted
    (FailOnRecompileLimitHit on the GPU)."""
    from fastqwen.engine.step import FrameFunctions

    fns = FrameFunctions.of(FUSED).compile()
    codes = set()
    for name in ("layer", "mlp_down", "final_norm", "talker_token", "predictor_token"):
        fn = getattr(fns, name)
        target = fn.func if hasattr(fn, "func") else fn  # partial(compiled, ops=...)
        original = getattr(target, "_torchdynamo_orig_callable", None)
        assert original is not None, f"{name} is not a torch.compile wrapper"
        assert not hasattr(original, "func"), f"{name}: compiled a partial"
        codes.add(original.__code__)
    assert len(codes) == 5


def test_prefill_groups_are_powers_of_two_up_to_the_scratch_rows():
    from fastqwen.engine.runner import prefill_group

    assert [prefill_group(n, 16) for n in (1, 2, 3, 5, 8, 9, 16)] == [1, 2, 4, 8, 8, 16, 16]
    assert prefill_group(7, 6) == 6  # never more rows than the scratch cache has


def test_row_streams_hold_each_slot_seed_as_torch_keeps_it():
    from fastqwen.engine.sampling import RowStreams

    streams = RowStreams("cpu", 4)
    streams.offset.fill_(12)
    streams.load(1, 2**64 - 1, talker=False, sub=True)  # uint64 seed: int64 two's complement
    streams.load(2, 1234, talker=True, sub=False)
    assert streams.seed.tolist() == [0, -1, 1234, 0]
    assert streams.offset.tolist() == [12, 0, 0, 12]  # a new request starts its stream at 0
    assert streams.talker.tolist() == [True, False, True, True]
    assert streams.sub.tolist() == [True, True, False, True]
    view = streams.rows(2)
    view.offset.add_(4)  # a bucket's rows are views: the kernel moves the slots' offsets
    assert streams.offset.tolist() == [16, 4, 0, 12]


def test_joiners_loaded_together_get_their_own_rows(tiny_model):
    """`load_many` writes every joiner's row in one indexed write per tensor: each row
    must hold its own request's values, and the other rows keep theirs."""
    tts = tiny_model("custom_voice").tts
    runner = FastQwen3TTS(tts, config=EngineConfig(max_batch_size=4)).runner
    state, dt = runner.state, runner.model.dtype
    state.pos.fill_(99)
    state.presence.fill_(True)
    runner.talker_sampling.temperature.fill_(5.0)
    texts = ["A short one.", "A second request, with rather more words in it than the first."]
    prompts = [
        build_talker_prompt(tts, VoiceRequest("custom_voice", t, "english", speaker="ryan"))
        for t in texts
    ]
    params = [
        SamplingParams(temperature=0.7, top_k=20, top_p=0.9, repetition_penalty=1.1,
                       min_new_tokens=3, subtalker_temperature=0.5, subtalker_top_k=7),
        SamplingParams(do_sample=False, subtalker_dosample=False, subtalker_top_p=0.8),
    ]  # fmt: skip
    runner.load_many([(3, prompts[0], params[0], 7), (1, prompts[1], params[1], 2**64 - 5)])
    assert state.pos.tolist() == [99, prompts[1].prompt_len, 99, prompts[0].prompt_len]
    assert state.step[[1, 3]].tolist() == [0, 0]
    assert not state.presence[[1, 3]].any() and state.presence[[0, 2]].all()
    for slot, prompt in ((3, prompts[0]), (1, prompts[1])):
        n = prompt.trailing_text.shape[1]
        assert torch.equal(state.trailing[slot, :n], prompt.trailing_text[0].to(dt))
        pad = prompt.tts_pad_embed.reshape(-1).to(dt)
        assert torch.equal(state.trailing[slot, n:], pad.expand_as(state.trailing[slot, n:]))
    talker, sub = runner.talker_sampling, runner.sub_sampling
    assert talker.temperature[:, 0].tolist() == pytest.approx([5.0, 0.9, 5.0, 0.7])
    assert talker.top_k[[1, 3], 0].tolist() == [50, 20]
    assert talker.top_p[[1, 3], 0].tolist() == pytest.approx([1.0, 0.9])
    assert talker.repetition_penalty[[1, 3], 0].tolist() == pytest.approx([1.05, 1.1])
    assert talker.min_new_tokens[[1, 3]].tolist() == [2, 3]
    assert talker.do_sample[[1, 3]].tolist() == [False, True]
    assert sub.temperature[[1, 3], 0].tolist() == pytest.approx([0.9, 0.5])
    assert sub.top_k[[1, 3], 0].tolist() == [50, 7]
    assert sub.top_p[[1, 3], 0].tolist() == pytest.approx([0.8, 1.0])
    assert sub.repetition_penalty[[1, 3], 0].tolist() == [1.0, 1.0]  # no penalty, no EOS
    assert sub.min_new_tokens[[1, 3]].tolist() == [0, 0]
    assert sub.do_sample[[1, 3]].tolist() == [False, True]
    assert runner.generators[3].initial_seed() == 7
    assert runner.generators[1].initial_seed() == 2**64 - 5
    assert runner.drawing[1] == (False, False) and runner.drawing[3] == (True, True)


def test_a_block_ends_at_the_first_frame_its_stop_asks_for(tiny_engine):
    runner = tiny_engine("custom_voice").runner
    calls = []

    def step():
        calls.append(1)

    def stop_on(answers):
        asked = iter(answers)
        return lambda: next(asked)

    assert runner.run_block(step, 1, 8).shape == (1, 8, 16) and len(calls) == 8
    calls.clear()  # asked after frames 2, 3 and 4: ends after the 4th
    codes = runner.run_block(step, 2, 8, stop=stop_on([False, False, True]), min_frames=2)
    assert codes.shape == (2, 4, 16) and len(calls) == 4
    calls.clear()  # never before min_frames, and never past n
    assert runner.run_block(step, 1, 8, stop=lambda: True, min_frames=3).shape[1] == 3
    assert runner.run_block(step, 1, 5, stop=lambda: False).shape[1] == 5


def test_a_block_is_cut_for_a_joiner_with_a_slot_free_or_a_cancellation_never_in_a_first_chunk(
    tiny_model,
):
    from fastqwen.engine.scheduler import Job

    tts = tiny_model("custom_voice").tts
    fast = FastQwen3TTS(tts, config=EngineConfig(max_batch_size=2, sync_every=8))
    scheduler = fast.scheduler
    running = Job(prompt=None, params=SamplingParams(), seed=0, max_frames=50)
    running.done_frames = 8
    joiner = Job(prompt=None, params=SamplingParams(), seed=0, max_frames=50, first_block=2)
    stop, min_frames = scheduler._early_end([(0, running)])
    assert stop is not None and min_frames == 1 and stop() is False  # nobody waiting
    scheduler._pending.append(joiner)
    assert stop() is True
    stop, min_frames = scheduler._early_end([(0, running), (1, joiner)])
    assert min_frames == 2  # a streamed first chunk is never cut
    scheduler._slots[:] = [running, joiner]  # no slot free: a joiner could not join anyway
    stop, _ = scheduler._early_end([(0, running), (1, joiner)])
    assert stop() is False
    running.cancel()  # but a cancelled request's slot is freed at once
    assert stop() is True
    scheduler._slots[:] = [running, None]
    off = FastQwen3TTS(tts, config=EngineConfig(max_batch_size=2, admit_in_block=False))
    assert off.scheduler._early_end([(0, running)]) == (None, 1)
    scheduler._pending.clear()
    scheduler._slots[:] = [None, None]


def test_a_cancelled_lone_request_stops_the_loop_within_its_block(tiny_model):
    """Closing a stream ends its block a frame later, not `sync_every` frames later: the
    engine is idle again for the next request (`wait_idle`)."""
    import time

    tts = tiny_model("custom_voice").tts
    fast = FastQwen3TTS(tts, config=EngineConfig(max_batch_size=2, sync_every=400))
    try:
        long = SamplingParams(max_new_tokens=400, min_new_tokens=400)
        handle = fast.submit(REQUEST, long, 1, first_chunk_frames=2, chunk_frames=2)
        next(iter(handle))  # the first chunk: the 400-frame block has begun
        steps = fast.scheduler.steps
        handle.cancel()
        assert fast.scheduler.wait_idle(timeout=60)
        ran = fast.scheduler.steps - steps
        assert fast.scheduler.times.cut_blocks >= 1
        assert ran < 100, f"{ran} frames ran after the cancel"
        t0 = time.monotonic()
        assert fast.scheduler.wait_idle(timeout=1) and time.monotonic() - t0 < 0.5
    finally:
        fast.close()


def test_prefill_graphs_are_captured_only_while_nothing_else_runs(tiny_model, monkeypatch):
    """A prefill beside running requests must not stop them for a graph capture: the
    scheduler says so (`capture=False`), and the runner then prefills without a graph."""
    import time

    tts = tiny_model("custom_voice").tts
    fast = FastQwen3TTS(tts, config=EngineConfig(max_batch_size=2))
    seen = []
    original = fast.runner.prefill

    def prefill(slots, prompts, capture=True):
        seen.append(capture)
        return original(slots, prompts, capture)

    monkeypatch.setattr(fast.runner, "prefill", prefill)
    long = SamplingParams(max_new_tokens=400, min_new_tokens=400)
    first = fast.submit(REQUEST, long, 1, streaming=False)
    deadline = time.monotonic() + 60
    while fast.scheduler.active == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    second = fast.submit(REQUEST, SamplingParams(max_new_tokens=4), 2, streaming=False)
    second.result(timeout=120)
    assert not first.done(), "the first request ended before the second joined"
    first.cancel()
    fast.close()
    assert seen == [True, False]


def test_a_job_wakes_its_reader_only_once_wake_frames_are_waiting():
    """The scheduler hands a request's blocks over `wake_frames` at a time (and whatever is
    left at its end), in order: a reader that decodes 48 frames at a time is not woken
    after every 8-frame block."""
    from fastqwen.engine.scheduler import Job

    job = Job(prompt=None, params=SamplingParams(), seed=0, max_frames=100)
    job.wake_frames = 5
    blocks = [torch.full((2, 16), i) for i in range(4)]
    job._put(blocks[0])
    job._put(blocks[1])
    assert job._queue.qsize() == 0  # 4 frames waiting: not yet
    job._put(blocks[2])
    assert job._queue.qsize() == 1  # 6 >= 5: the three blocks in one hand-over
    job._put(blocks[3])
    assert job._queue.qsize() == 1
    job._end()
    got = list(job.blocks(timeout=1))
    assert [int(b[0, 0]) for b in got] == [0, 1, 2, 3]
