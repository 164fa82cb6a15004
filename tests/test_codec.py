"""Codec decoding: streamed audio equals the reference's full decode.

The codec is a small random-weight `Qwen3TTSTokenizerV2Model` with the real
structure (16 x 2048 codebooks, 1920 samples per frame, sliding window 72,
upsampling (2, 2) then (8, 5, 4, 3)), but two transformer layers of width 32. Its
weights are scaled so that activations stay near unit size, and the transformer
carries real weight (layer scale 0.5). Then cutting its history changes the
audio a lot, and an exactness test has teeth.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from qwen_tts.core import Qwen3TTSTokenizerV2Config, Qwen3TTSTokenizerV2Model
from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Decoder
from qwen_tts.inference.qwen3_tts_tokenizer import Qwen3TTSTokenizer

from fastqwen.codec.batch import _latents, _waveform
from fastqwen.codec.decoder import (
    REFERENCE_CHUNK_FRAMES,
    REFERENCE_LEFT_CONTEXT_FRAMES,
    StreamingDecoder,
    decode_codes,
    frames_to_samples,
    receptive_field,
    reference_window_start,
)
from fastqwen.constants import NUM_CODEBOOKS, SAMPLES_PER_FRAME

# Float rounding only. Kernels run on other lengths than the reference's round
# differently; on this codec that is ~3e-6 (audio RMS ~0.15).
TOLERANCE = 2e-5


def _tiny_codec(seed: int = 0) -> Qwen3TTSTokenizer:
    torch.manual_seed(seed)
    encoder = dict(
        hidden_size=32,
        num_filters=4,
        num_hidden_layers=1,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        codebook_dim=16,
        vector_quantization_hidden_dimension=16,
        num_quantizers=32,
        upsample_groups=32,
        upsampling_ratios=[8, 6, 5, 4],
        frame_rate=12.5,
    )
    decoder = dict(
        hidden_size=32,
        latent_dim=32,
        codebook_dim=32,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=64,
        num_hidden_layers=2,
        sliding_window=72,
        decoder_dim=16,
        upsample_rates=[8, 5, 4, 3],
        upsampling_ratios=[2, 2],
    )
    config = Qwen3TTSTokenizerV2Config(encoder_config=encoder, decoder_config=decoder)
    config.decoder_config._attn_implementation = "sdpa"
    model = Qwen3TTSTokenizerV2Model(config).eval()
    with torch.no_grad():
        for module in model.decoder.modules():
            if isinstance(module, (torch.nn.Conv1d, torch.nn.Linear)):
                module.weight.normal_(0, module.weight[0].numel() ** -0.5)  # fan-in
            elif isinstance(module, torch.nn.ConvTranspose1d):
                w = module.weight
                module.weight.normal_(0, (w.shape[0] * w.shape[2] / module.stride[0]) ** -0.5)
        for name, p in model.decoder.named_parameters():
            if name.endswith("embedding_sum"):
                p.normal_()  # zeros at construction: the codec would be silent
            elif name.endswith(("alpha", "beta")):
                p.uniform_(-0.5, 0.5)  # SnakeBeta
            elif name.endswith(("layer_scale.scale", "gamma")):
                p.fill_(0.5)  # let the transformer and ConvNeXt branches matter
        for name, module in model.decoder.decoder.named_modules():
            if name.endswith("conv2"):
                module.conv.weight.mul_(0.3)  # residual branches: keep the vocoder near unit scale
        model.decoder.decoder[-1].conv.weight.mul_(0.05)  # audio RMS ~0.15, no clipping
    tokenizer = Qwen3TTSTokenizer()  # decode() needs only these three
    tokenizer.model, tokenizer.config, tokenizer.device = model, model.config, torch.device("cpu")
    return tokenizer


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # These kernels are tiny: with 2 OpenMP threads on a shared 2-core box they spin
    # and run ~50x slower than with one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def codec() -> Qwen3TTSTokenizer:
    return _tiny_codec()


def _codes(frames: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2048, (frames, NUM_CODEBOOKS), generator=gen)  # (T, 16)


def _stream(decoder: StreamingDecoder, codes: torch.Tensor, push_frames: int) -> list[np.ndarray]:
    chunks = []
    for i in range(0, codes.shape[0], push_frames):
        out = decoder.push(codes[i : i + push_frames])
        if out is not None:
            chunks.append(out)
    tail = decoder.flush()
    if tail is not None:
        chunks.append(tail)
    return chunks


def _max_diff(name: str, streamed: np.ndarray, full: np.ndarray) -> float:
    assert streamed.shape == full.shape, f"{name}: streamed {streamed.shape}, full {full.shape}"
    diff = np.abs(streamed - full)
    worst = int(diff.argmax())
    print(f"{name}: max |stream - full| = {diff.max():.2e} at frame {worst // SAMPLES_PER_FRAME}")
    return float(diff.max())


def test_reference_window_constants_match_installed_qwen_tts():
    params = inspect.signature(Qwen3TTSTokenizerV2Decoder.chunked_decode).parameters
    assert params["chunk_size"].default == REFERENCE_CHUNK_FRAMES
    assert params["left_context_size"].default == REFERENCE_LEFT_CONTEXT_FRAMES
    assert [reference_window_start(f) for f in (0, 299, 300, 599, 600)] == [0, 0, 275, 275, 575]


def test_split_forward_is_the_reference_forward(codec):
    decoder = codec.model.decoder
    codes = _codes(30, seed=1).T.unsqueeze(0)  # (1, 16, T)
    with torch.inference_mode():
        assert torch.equal(_waveform(decoder, _latents(decoder, codes)), decoder(codes))


def test_decoder_is_causal_and_receptive_field_is_tight(codec):
    field = receptive_field(codec)
    # 2 (pre_conv) + 2 layers * 71 (window 72) + ceil(9.4) (upsampling and vocoder convs)
    assert (field.pre_conv_frames, field.transformer_frames, field.conv_frames) == (2, 142, 10)
    j, frames = 10, 10 + field.total_frames + 6
    codes = _codes(frames, seed=2)
    changed = codes.clone()
    changed[j] = (changed[j] + 7) % 2048
    decoder = codec.model.decoder
    with torch.inference_mode():
        a = decoder(codes.T.unsqueeze(0))[0, 0]
        b = decoder(changed.T.unsqueeze(0))[0, 0]
    moved = (a != b).nonzero().flatten()
    assert moved.min().item() == j * SAMPLES_PER_FRAME, "a frame changed audio before its own start"
    last_frame = moved.max().item() // SAMPLES_PER_FRAME
    assert j + field.total_frames - 1 <= last_frame <= j + field.total_frames


@pytest.mark.parametrize(
    ("frames", "first", "chunk", "push"),
    [
        (100, 2, 12, 1),  # engine defaults, one frame per push; 12 does not divide 98
        (100, 3, 7, 5),  # pushes cut across chunks
        (41, 2, 12, 1),  # last chunk partial (39 = 3 * 12 + 3), returned by flush
        (57, 1, 1, 57),  # one push completes many chunks
        (20, 25, 12, 4),  # stream shorter than the first chunk: flush only
    ],
)
def test_stream_matches_full_decode(codec, frames, first, chunk, push):
    codes = _codes(frames, seed=frames + chunk)
    full = decode_codes(codec, codes)
    assert full.shape == (frames_to_samples(frames),)
    decoder = StreamingDecoder(codec, first_chunk_frames=first, chunk_frames=chunk)
    chunks = _stream(decoder, codes, push)
    sizes = [len(c) // SAMPLES_PER_FRAME for c in chunks]
    assert [len(c) % SAMPLES_PER_FRAME for c in chunks] == [0] * len(chunks)
    if push == 1:  # otherwise one push may return several chunks, joined
        n_full = (frames - first) // chunk
        rest = [(frames - first) % chunk] if (frames - first) % chunk else []
        assert sizes == [first] + [chunk] * n_full + rest
    streamed = np.concatenate(chunks)
    assert streamed.dtype == np.float32
    assert _max_diff(f"T={frames} first={first} chunk={chunk}", streamed, full) <= TOLERANCE


def test_stream_matches_reference_across_its_300_frame_windows(codec):
    frames = REFERENCE_CHUNK_FRAMES + 20
    codes = _codes(frames, seed=3)
    full = decode_codes(codec, codes)  # the reference restarts at frame 300, 25 frames back
    streamed = np.concatenate(_stream(StreamingDecoder(codec), codes, push_frames=6))
    assert _max_diff("across frame 300", streamed, full) <= TOLERANCE
    # Not the same as decoding with all history: the reference forgets, and so must we.
    with torch.inference_mode():
        unwindowed = codec.model.decoder(codes.T.unsqueeze(0))[0, 0].numpy()
    assert np.abs(unwindowed - full)[frames_to_samples(REFERENCE_CHUNK_FRAMES) :].max() > 1e-3


def test_left_context_shorter_than_receptive_field_is_approximate(codec):
    frames = 60
    codes = _codes(frames, seed=4)
    full = decode_codes(codec, codes)
    short = np.concatenate(_stream(StreamingDecoder(codec, left_context_frames=5), codes, 12))
    field = receptive_field(codec).total_frames
    enough = np.concatenate(_stream(StreamingDecoder(codec, left_context_frames=field), codes, 12))
    assert _max_diff("left context 5", short, full) > 1e-3
    assert _max_diff(f"left context {field}", enough, full) <= TOLERANCE


def test_primed_frames_are_context_only(codec):
    ref, new = _codes(30, seed=5), _codes(40, seed=6)
    full = decode_codes(codec, torch.cat([ref, new]))[frames_to_samples(30) :]
    decoder = StreamingDecoder(codec, first_chunk_frames=2, chunk_frames=12)
    decoder.prime(ref)
    chunks = _stream(decoder, new, push_frames=1)
    assert len(chunks[0]) == frames_to_samples(2)
    assert _max_diff("primed", np.concatenate(chunks), full) <= TOLERANCE
    with pytest.raises(ValueError, match="prime"):
        decoder.prime(ref)


def test_push_and_flush_edge_cases(codec):
    decoder = StreamingDecoder(codec, first_chunk_frames=2, chunk_frames=4)
    assert decoder.flush() is None
    assert decoder.push(torch.zeros((0, NUM_CODEBOOKS), dtype=torch.long)) is None
    assert decoder.push(_codes(1, seed=7)[0]) is None  # a single (16,) frame
    assert decoder.pending_frames == 1
    with pytest.raises(ValueError, match="2150"):
        decoder.push(torch.full((1, NUM_CODEBOOKS), 2150))  # EOS is not an audio frame
    assert decoder.pending_frames == 0  # the bad chunk was dropped; the stream goes on
    with torch.inference_mode():  # as the engine calls it
        assert len(decoder.push(_codes(2, seed=8))) == frames_to_samples(2)
    decoder.reset()
    assert decoder.pending_frames == 0
    assert len(decoder.push(_codes(2, seed=8))) == frames_to_samples(2)  # first chunk again


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(first_chunk_frames=0), "first_chunk_frames=0"),
        (dict(chunk_frames=-3), "chunk_frames=-3"),
        (dict(chunk_frames=1.5), "chunk_frames=1.5"),
        (dict(chunk_frames=True), "chunk_frames=True"),
        (dict(left_context_frames=-1), "left_context_frames=-1"),
    ],
)
def test_bad_arguments_raise(codec, kwargs, match):
    with pytest.raises(ValueError, match=match):
        StreamingDecoder(codec, **kwargs)


def test_bad_codes_and_tokenizers_raise(codec):
    decoder = StreamingDecoder(codec)
    with pytest.raises(ValueError, match=r"\(3, 15\)"):
        decoder.push(torch.zeros((3, 15), dtype=torch.long))
    with pytest.raises(ValueError, match="float32"):
        decoder.push(torch.zeros((3, NUM_CODEBOOKS)))
    with pytest.raises(ValueError, match=r"\(2, 3, 16\)"):
        decode_codes(codec, torch.zeros((2, 3, NUM_CODEBOOKS), dtype=torch.long))
    with pytest.raises(ValueError, match="object"):
        StreamingDecoder(object())


def test_frames_to_samples():
    assert frames_to_samples(0) == 0
    assert frames_to_samples(25) == 25 * SAMPLES_PER_FRAME == 48_000
    with pytest.raises(ValueError, match="-1"):
        frames_to_samples(-1)


def test_stream_matches_full_decode_on_the_shared_tiny_checkpoint(request):
    try:
        tiny_model = request.getfixturevalue("tiny_model")
    except pytest.FixtureLookupError:
        pytest.skip("tests/conftest.py has no tiny_model fixture")
    speech_tokenizer = tiny_model("custom_voice").tts.model.speech_tokenizer
    codes = _codes(50, seed=9)
    full = decode_codes(speech_tokenizer, codes)
    assert full.std() > 1e-3, "the tiny codec is silent: nothing would be compared"
    # This codec's random vocoder amplifies rounding (its audio is mostly clipped), so
    # the bar is the reference's own noise: decoding a prefix vs. the start of the whole.
    own_noise = max(
        np.abs(decode_codes(speech_tokenizer, codes[:n]) - full[: frames_to_samples(n)]).max()
        for n in (14, 37)
    )
    print(f"tiny checkpoint: reference prefix-vs-whole noise {own_noise:.2e}")
    chunks = _stream(StreamingDecoder(speech_tokenizer), codes, push_frames=1)
    assert len(chunks[0]) == frames_to_samples(2)
    streamed = np.concatenate(chunks)
    assert _max_diff("tiny checkpoint", streamed, full) <= max(TOLERANCE, 4 * own_noise)
