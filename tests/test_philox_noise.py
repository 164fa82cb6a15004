"""The batched noise kernel (fastqwen/engine/triton/philox_noise.py) against a pure-torch
Philox4x32-10 written here from the algorithm, under Triton's interpreter; and, on CUDA,
against torch's own `exponential_` bit for bit."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

pytest.importorskip("triton")

MASK32 = 0xFFFFFFFF


def _wrap(x: torch.Tensor) -> torch.Tensor:
    return x & MASK32


def philox4x32_10(counter: list[torch.Tensor], key: list[torch.Tensor]) -> list[torch.Tensor]:
    """Philox4x32-10 on int64 tensors holding uint32 words (products kept to 64 bits:
    torch's int64 multiply wraps, the masks take the words back)."""
    c0, c1, c2, c3 = (_wrap(c.to(torch.int64)) for c in counter)
    k0, k1 = (_wrap(k.to(torch.int64)) for k in key)
    for round_ in range(10):
        if round_:
            k0, k1 = _wrap(k0 + 0x9E3779B9), _wrap(k1 + 0xBB67AE85)
        p0, p1 = c0 * 0xD2511F53, c2 * 0xCD9E8D57
        hi0, lo0 = _wrap(p0 >> 32), _wrap(p0)
        hi1, lo1 = _wrap(p1 >> 32), _wrap(p1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return [c0, c1, c2, c3]


def reference_words(seed: int, offset: int, vocab: int, threads: int) -> torch.Tensor:
    """(V,) the uint32 words (in int64) torch's `exponential_` uses: element i takes word
    offset + i // G of curand subsequence i % G."""
    i = torch.arange(vocab, dtype=torch.int64)
    position = offset + i // threads
    block, word = position >> 2, position & 3
    subsequence = i % threads
    key = [torch.tensor(seed & MASK32), torch.tensor((seed >> 32) & MASK32)]
    out = philox4x32_10([block & MASK32, block >> 32, subsequence & MASK32, subsequence >> 32], key)
    return torch.stack(out, dim=-1).gather(-1, word[:, None])[:, 0]


def reference_uniform(seed: int, offset: int, vocab: int, threads: int) -> torch.Tensor:
    """curand_uniform's float32: x * 2^-32 + 2^-33 (the product exact, one rounding)."""
    x = reference_words(seed, offset, vocab, threads).to(torch.float32)
    return x * 2.0**-32 + 2.0**-33


def reference_exponential(uniform: torch.Tensor) -> torch.Tensor:
    """torch's CUDA transform, with an exact log in place of `__logf`."""
    half_eps = torch.finfo(torch.float32).eps / 2
    log = torch.where(uniform >= 1 - half_eps, torch.tensor(-half_eps), uniform.log())
    return -log


def simulate_torch_kernel(seed: int, offset: int, vocab: int, threads: int) -> torch.Tensor:
    """(V,) words as torch's grid-stride kernel takes them, step by step: each thread t
    does curand_init(seed, t, offset) (counter (offset // 4, t), skipping offset % 4
    words), then per pass one curand4 (4 words on from where it stands), component j
    going to element t + G * (4 n + j)."""
    key = [torch.tensor(seed & MASK32), torch.tensor((seed >> 32) & MASK32)]
    t = torch.arange(threads, dtype=torch.int64)
    state, block = offset & 3, offset >> 2  # STATE, and the counter's low 64 bits

    def output(b: int) -> torch.Tensor:  # (G, 4) Philox of counter (b, t) per thread
        counter = [torch.full_like(t, b & MASK32), torch.full_like(t, b >> 32), t & MASK32, t >> 32]
        words = philox4x32_10(counter, key)
        return torch.stack(words, dim=-1)

    out = torch.full((vocab,), -1, dtype=torch.int64)
    current = output(block)
    passes = (vocab - 1) // (4 * threads) + 1
    for n in range(passes):
        block += 1
        following = output(block)
        four = torch.cat([current, following], dim=-1)[:, state : state + 4]  # curand4
        current = following
        for j in range(4):
            index = t + threads * (4 * n + j)
            keep = index < vocab
            out[index[keep]] = four[keep, j]
    return out


def test_reference_is_torch_loop():
    """The closed form (word offset + i // G of subsequence i % G) is what the loop takes."""
    for seed, offset, vocab, threads in [
        (3, 0, 40, 64), (3, 8, 300, 32), (2**40 + 9, 4 * 2**33 + 5, 200, 16), (1, 7, 129, 8),
    ]:  # fmt: skip
        assert torch.equal(
            simulate_torch_kernel(seed, offset, vocab, threads),
            reference_words(seed, offset, vocab, threads),
        )


def test_philox_known_answers():
    """Random123's published Philox4x32-10 answers (kat_vectors)."""
    cases = [
        ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        ([MASK32] * 4, [MASK32] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        (
            [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
            [0xA4093822, 0x299F31D0],
            [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1],
        ),
    ]
    for counter, key, expected in cases:
        got = philox4x32_10([torch.tensor(c) for c in counter], [torch.tensor(k) for k in key])
        assert [int(g) for g in got] == expected


def test_reference_word_layout():
    """The words follow curand's skipahead: offset 4n + s starts at word s of block n,
    and a thread's next call continues in the next block."""
    a = reference_words(7, 8, 32, threads=8)  # 4 passes' worth of one call per thread
    b = reference_words(7, 9, 32, threads=8)
    # threads=8: element i = t + 8 q takes word offset + q of subsequence t
    assert torch.equal(a.view(4, 8)[1:], b.view(4, 8)[:3])
    # offset 8 + 3 = 11 is word 3 of block 2, offset 12 word 0 of block 3
    c = reference_words(7, 11, 8, threads=8)
    d = reference_words(7, 12, 8, threads=8)
    assert torch.equal(a.view(4, 8)[3], c) and torch.equal(a.view(4, 8)[1], b.view(4, 8)[0])
    assert torch.equal(reference_words(7, 11, 16, threads=8).view(2, 8)[1], d)


KERNEL = """
    import json
    import torch
    from fastqwen.engine.triton.philox_noise import (
        _exponential_rows_kernel, exponential_rows, grid_threads, launch, philox_increment,
    )
    from tests.test_philox_noise import reference_exponential, reference_uniform

    seeds = [0, 1, 42, 2**32 + 5, 2**63 + 12345, 2**64 - 1]
    offsets = [0, 4, 8, 4 * 2**32 + 12, 1, 6, 2**62 + 3]
    rows = [(s, o) for s in seeds for o in offsets]  # 42 rows
    as_int64 = lambda v: v - 2**64 if v >= 2**63 else v
    seed = torch.tensor([as_int64(s) for s, _ in rows], dtype=torch.int64)
    result = {"uniform_equal": [], "exponential_close": [], "offsets_ok": True}
    for vocab, cap in ((300, None), (300, 1), (1030, None)):
        threads = grid_threads(vocab, cap)
        inc = philox_increment(vocab, cap)
        offset = torch.tensor([o for _, o in rows], dtype=torch.int64)
        drawing = torch.ones(len(rows), dtype=torch.bool)
        uniform = torch.empty(len(rows), vocab)
        launch(_exponential_rows_kernel, seed, offset.clone(), drawing, uniform, inc, threads,
               uniform=True, BLOCK=256)
        noise = torch.empty(len(rows), vocab)
        launch(_exponential_rows_kernel, seed, offset.clone(), drawing, noise, inc, threads,
               BLOCK=256)
        for r, (s, o) in enumerate(rows):
            u = reference_uniform(s, o, vocab, threads)
            result["uniform_equal"].append(bool(torch.equal(uniform[r], u)))
            e = reference_exponential(u)
            result["exponential_close"].append(bool(torch.allclose(noise[r], e, rtol=2e-6, atol=0)))
    # offsets: only drawing rows move, by the increment; others are all ones
    vocab = 3072
    offset = torch.tensor([o for _, o in rows], dtype=torch.int64)
    before = offset.clone()
    drawing = torch.tensor([r % 3 != 1 for r in range(len(rows))])
    out = exponential_rows(seed, offset, drawing, vocab, 4)
    result["moved"] = (offset - before).tolist()
    result["drawing"] = drawing.tolist()
    result["ones_where_idle"] = bool((out[~drawing] == 1).all())
    result["drawn_below_one_somewhere"] = bool((out[drawing] < 1).any(dim=1).all())
    result["increments"] = [philox_increment(v, cap) for v, cap in
                            ((2048, 1056), (3072, 1056), (2048, 1), (4 * 256 * 1056 + 1, 1056))]
    print(json.dumps(result))
"""


def test_kernel_matches_reference():
    from tests.test_triton_kernels import interpreted

    result = json.loads(interpreted(textwrap.dedent(KERNEL)).strip().splitlines()[-1])
    assert all(result["uniform_equal"]), result["uniform_equal"]
    assert all(result["exponential_close"]), result["exponential_close"]
    assert result["moved"] == [4 if d else 0 for d in result["drawing"]]
    assert result["ones_where_idle"] and result["drawn_below_one_somewhere"]
    # one pass of the grid: 4; G = 256 threads for 2048: 2 passes of 4 * 256; past the cap, 8
    assert result["increments"] == [4, 4, 8, 8]


@pytest.mark.gpu
@pytest.mark.parametrize("vocab", [2048, 3072])
def test_matches_torch_exponential_on_cuda(vocab):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from fastqwen.engine.triton.philox_noise import exponential_rows, philox_increment

    rows = 64
    seeds = [(s * 0x9E3779B97F4A7C15 + 17) % 2**64 for s in range(rows)]
    offsets = [4 * ((r * 37) % 11) + 4 * 2**20 * (r % 3) for r in range(rows)]
    expected, moved = [], []
    for s, o in zip(seeds, offsets, strict=True):
        g = torch.Generator("cuda")
        g.manual_seed(s)
        g.set_offset(o)
        expected.append(torch.empty(vocab, device="cuda").exponential_(1, generator=g))
        moved.append(g.get_offset())
    increment = philox_increment(vocab, None)
    assert all(m - o == increment for m, o in zip(moved, offsets, strict=True))
    as_int64 = [s - 2**64 if s >= 2**63 else s for s in seeds]
    seed = torch.tensor(as_int64, dtype=torch.int64, device="cuda")
    offset = torch.tensor(offsets, dtype=torch.int64, device="cuda")
    drawing = torch.ones(rows, dtype=torch.bool, device="cuda")
    out = exponential_rows(seed, offset, drawing, vocab, increment)
    assert torch.equal(out.view(torch.int32), torch.stack(expected).view(torch.int32))
    assert offset.tolist() == moved


ENGINE_ROWS = """
import json, torch
from fastqwen.config import EngineConfig, SamplingParams
from fastqwen.engine.model import StaticModel
from fastqwen.engine.runner import FrameRunner
from fastqwen.engine.scheduler import Scheduler
from fastqwen.models.sources import load_model
from fastqwen.prompts.builder import VoiceRequest, build_talker_prompt

tts = load_model("random:tiny-custom_voice", device="cpu", dtype="float32").tts
config = EngineConfig(max_seq_len=256, max_batch_size=4)
FRAMES = 6
# (speaker, seed, talker samples, sub-talker samples)
ROWS = [("aiden", 11, True, True), ("serena", 12, False, True), ("ryan", 13, True, False)]

def prompt(speaker):
    return build_talker_prompt(tts, VoiceRequest("custom_voice", "Rows apart.", speaker=speaker))

def params(talk, sub):
    n = FRAMES + 1
    return SamplingParams(
        max_new_tokens=n, min_new_tokens=n, do_sample=talk, subtalker_dosample=sub
    )

def run(rows):
    model = StaticModel.from_qwen_tts(tts.model, 256, batch=4)
    runner = FrameRunner(model, config, row_streams=True)
    scheduler = Scheduler(runner)
    try:
        jobs = scheduler.submit_many([
            scheduler.job(prompt(sp), params(talk, sub), seed) for sp, seed, talk, sub in rows
        ])
        codes = [torch.cat(list(job.blocks())).tolist() for job in jobs]
    finally:
        scheduler.close()
    return codes, [int(runner.streams.offset[job.slot]) for job in jobs]

batched, offsets = run(ROWS)
solo = [run([row])[0][0] for row in ROWS]
print(json.dumps({"batched": batched, "solo": solo, "offsets": offsets}))
"""


def test_engine_rows_draw_from_their_own_streams_under_the_interpreter(fastqwen_cache):
    """The runner with `RowStreams` (the CUDA default), run eagerly on the CPU with the
    kernel interpreted: each row of a batch gives its solo codes, and each slot's stream
    moved by 4 per codebook-0 draw and 4 per codebook 1..15 draw of its sampled sides only."""
    from tests.test_triton_kernels import interpreted

    result = json.loads(interpreted(ENGINE_ROWS).strip().splitlines()[-1])
    frames = 6
    assert [len(c) for c in result["batched"]] == [frames] * 3
    assert result["batched"] == result["solo"]
    talker, sub = 4, 15 * 4
    # each slot ran its frames and one more, whose codebook-0 token is the reference's draw
    # after the last frame (the scheduler's extra frame)
    ran = frames + 1
    assert result["offsets"] == [ran * (talker + sub), ran * sub, ran * talker]
