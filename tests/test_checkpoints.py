"""Random checkpoints: the real layout, loadable and runnable by qwen_tts, deterministic."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fastqwen import constants as C
from fastqwen.models.checkpoints import (
    _CODEC_OUTPUT_GAIN,
    GENERATION_DEFAULTS,
    MARKER_FILE,
    build_random_checkpoint,
    codec_config,
    model_config,
    random_codec,
)
from fastqwen.tools.cli import main as cli_main

KINDS = ("custom_voice", "base", "voice_design")
TEXT = "Hello world, this is a quick test of the speech model."
FRAME = C.SAMPLES_PER_FRAME
CODEC_FRAMES = 25  # 2 s of audio: past the pre-transformer's warm-up, ~2 s to decode at 1.7B


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ref_audio(seconds: float = 1.5) -> tuple[np.ndarray, int]:
    t = np.arange(int(seconds * C.SAMPLE_RATE)) / C.SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), C.SAMPLE_RATE


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_checkpoint_has_the_real_layout_and_loads(tiny_model, kind):
    loaded = tiny_model(kind)
    root = Path(loaded.source.path)
    for name in (
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "speech_tokenizer/config.json",
        "speech_tokenizer/model.safetensors",
        "speech_tokenizer/preprocessor_config.json",
        MARKER_FILE,
    ):
        assert (root / name).is_file(), name
    assert json.loads((root / "generation_config.json").read_text()) == GENERATION_DEFAULTS
    feat = json.loads((root / "speech_tokenizer/preprocessor_config.json").read_text())
    assert feat["feature_extractor_type"] == "EncodecFeatureExtractor"
    assert feat["sampling_rate"] == C.SAMPLE_RATE

    model = loaded.tts.model
    talker = model.config.talker_config
    assert model.tts_model_type == kind == loaded.source.kind
    assert talker.codec_eos_token_id == C.CODEC_EOS_ID and talker.codec_pad_id == C.CODEC_PAD_ID
    assert talker.codec_language_id == C.LANGUAGE_IDS
    assert talker.vocab_size == 3072 and talker.num_code_groups == C.NUM_CODEBOOKS
    assert talker.text_vocab_size == 151_936
    assert sum(talker.rope_scaling["mrope_section"]) * 2 == talker.head_dim
    if kind == "custom_voice":
        assert talker.spk_id == C.SPEAKER_IDS
        assert talker.spk_is_dialect["eric"] == "sichuan_dialect"
        assert talker.spk_is_dialect["dylan"] == "beijing_dialect"
        assert talker.spk_is_dialect["ryan"] is False
    else:
        assert talker.spk_id == {} and talker.spk_is_dialect == {}
    assert (model.speaker_encoder is not None) == (kind == "base")
    codec = model.speech_tokenizer.model
    assert codec.get_decode_upsample_rate() == codec.get_encode_downsample_rate() == FRAME
    assert codec.get_output_sample_rate() == C.SAMPLE_RATE
    assert codec.config.decoder_config.num_quantizers == C.NUM_CODEBOOKS
    assert codec.config.decoder_config.codebook_size == C.CODEBOOK_SIZE


def test_text_tokenizer_puts_special_and_role_tokens_at_real_ids(tiny_model):
    tok = tiny_model("custom_voice").tts.processor.tokenizer
    ids = tok("<|im_start|>assistant\nHello world.<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    # qwen_tts slices by position: 3 role tokens at the front, 5 closing tokens at the end.
    assert ids[:3] == [C.IM_START_ID, 77091, 198]
    assert ids[-5:] == [C.IM_END_ID, 198, C.IM_START_ID, 77091, 198]
    for token, tid in [("<|tts_pad|>", C.TTS_PAD_ID), ("<|tts_bos|>", C.TTS_BOS_ID)]:
        assert tok.convert_tokens_to_ids(token) == tid
    assert tok.convert_tokens_to_ids("<|tts_eos|>") == C.TTS_EOS_ID
    assert (
        tok.decode(tok("Hello world, this is a test.")["input_ids"])
        == "Hello world, this is a test."
    )


def test_custom_voice_generates_including_dialect_speakers(tiny_model):
    tts = tiny_model("custom_voice").tts
    torch.manual_seed(0)
    wavs, sr = tts.generate_custom_voice(
        text=[TEXT, TEXT], speaker=["ryan", "Eric"], language=["english", "chinese"],
        instruct=["", "Speak slowly."], max_new_tokens=9,
    )  # fmt: skip
    assert sr == C.SAMPLE_RATE
    # No EOS: max_new_tokens=N gives N-1 frames in the reference.
    assert [w.shape[0] for w in wavs] == [8 * FRAME, 8 * FRAME]
    assert all(np.isfinite(w).all() for w in wavs)


def test_sampled_run_does_not_stop_early(tiny_model):
    tts = tiny_model("voice_design").tts
    torch.manual_seed(1)
    wavs, _ = tts.generate_voice_design(text=TEXT, instruct="A calm voice.", max_new_tokens=41)
    assert wavs[0].shape[0] == 40 * FRAME  # EOS (2150) never sampled with the reference defaults


def test_voice_clone_icl_and_x_vector(tiny_model):
    tts = tiny_model("base").tts
    ref = _ref_audio()
    prompt = tts.create_voice_clone_prompt(ref_audio=ref, ref_text="Hello there.")[0]
    assert prompt.icl_mode and prompt.ref_code.shape[1] == C.NUM_CODEBOOKS
    assert prompt.ref_code.shape[0] == -(-ref[0].shape[0] // FRAME)
    assert len(torch.unique(prompt.ref_code[:, 1])) > 1  # the codec encoder is not degenerate
    assert prompt.ref_spk_embedding.shape == (tts.model.config.talker_config.hidden_size,)
    assert torch.isfinite(prompt.ref_spk_embedding).all()
    torch.manual_seed(0)
    wavs, _ = tts.generate_voice_clone(
        text=TEXT, language="english", ref_audio=ref, ref_text="Hello there.", max_new_tokens=7
    )
    assert abs(wavs[0].shape[0] - 6 * FRAME) <= 1  # the reference cuts at ref_len/total_len
    torch.manual_seed(0)
    wavs, _ = tts.generate_voice_clone(
        text=TEXT, ref_audio=ref, x_vector_only_mode=True, max_new_tokens=7
    )
    assert wavs[0].shape[0] == 6 * FRAME


def test_build_is_deterministic_and_seeded(tmp_path):
    a = build_random_checkpoint("tiny", "base", tmp_path / "a", seed=5)
    assert cli_main(["make-checkpoint", "--size", "tiny", "--kind", "base", "--seed", "5",
                     str(tmp_path / "b")]) == 0  # fmt: skip
    c = build_random_checkpoint("tiny", "base", tmp_path / "c", seed=6)
    b = tmp_path / "b"
    for name in ("model.safetensors", "speech_tokenizer/model.safetensors", "config.json",
                 "tokenizer.json", "speech_tokenizer/config.json"):  # fmt: skip
        assert _digest(a / name) == _digest(b / name), name
    assert _digest(a / "model.safetensors") != _digest(c / "model.safetensors")
    marker = json.loads((a / MARKER_FILE).read_text())
    assert (marker["size"], marker["kind"], marker["seed"]) == ("tiny", "base", 5)


@pytest.mark.parametrize(
    "size, kind, params_b",
    [("0.6b", "base", 0.915), ("0.6b", "custom_voice", 0.906), ("1.7b", "custom_voice", 1.917),
     ("1.7b", "base", 1.929), ("1.7b", "voice_design", 1.917)],
)  # fmt: skip
def test_real_sizes_match_the_published_parameter_counts(size, kind, params_b):
    from qwen_tts.core.models import Qwen3TTSConfig, Qwen3TTSForConditionalGeneration
    from transformers.modeling_utils import no_init_weights

    cfg = model_config(size, kind)
    talker = cfg["talker_config"]
    assert talker["num_hidden_layers"] == 28 and talker["head_dim"] == 128
    assert talker["rope_scaling"]["mrope_section"] == [24, 20, 20]
    assert cfg["tts_model_size"] == {"0.6b": "0b6", "1.7b": "1b7"}[size]
    with no_init_weights(), torch.device("meta"):
        model = Qwen3TTSForConditionalGeneration(Qwen3TTSConfig(**cfg))
    n = sum(p.numel() for p in model.parameters())
    assert n / 1e9 == pytest.approx(params_b, abs=0.002)
    has_projection = isinstance(
        model.talker.code_predictor.small_to_mtp_projection, torch.nn.Linear
    )
    assert has_projection == (size == "1.7b")


def test_real_codec_matches_the_published_size():
    from qwen_tts.core import Qwen3TTSTokenizerV2Config, Qwen3TTSTokenizerV2Model
    from transformers.modeling_utils import no_init_weights

    with no_init_weights(), torch.device("meta"):
        codec = Qwen3TTSTokenizerV2Model(Qwen3TTSTokenizerV2Config(**codec_config("1.7b")))
    decoder = sum(p.numel() for p in codec.decoder.parameters())
    assert decoder / 1e6 == pytest.approx(114.3, abs=0.1)  # facts file: 114 M
    total = sum(t.numel() for t in [*codec.parameters(), *codec.buffers()] if t.is_floating_point())
    assert total * 4 / 1e6 == pytest.approx(682, abs=2)  # published float32 file: 682 MB


@pytest.mark.parametrize("size, kind", [("huge", "base"), ("tiny", "clone")])
def test_bad_size_or_kind_is_a_value_error(tmp_path, size, kind):
    with pytest.raises(ValueError, match="huge|clone"):
        build_random_checkpoint(size, kind, tmp_path)


@pytest.mark.parametrize("size", C.MODEL_SIZES)
def test_random_codec_audio_stays_below_full_scale(size):
    # Only the codec (seconds on CPU at 1.7B, the talker would take minutes); the talker's
    # codes from random weights are near-uniform, like these.
    codec = random_codec(size)
    last_conv = codec.decoder.decoder[-1].conv
    assert last_conv.bias is None or not last_conv.bias.any()  # output linear in the gain
    raw = []
    last_conv.register_forward_hook(lambda module, args, out: raw.append(out))
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, C.CODEBOOK_SIZE, (1, CODEC_FRAMES, C.NUM_CODEBOOKS), generator=gen)
    with torch.no_grad():
        wav = codec.decode(codes, return_dict=False)[0][0]
    assert wav.shape == (CODEC_FRAMES * FRAME,)
    peak, rms = wav.abs().max().item(), wav.pow(2).mean().sqrt().item()
    print(f"{size}: peak {peak:.3f} rms {rms:.3f}")
    assert peak < 1.0 and 0.1 < rms < 0.25, (peak, rms)
    # The same decoder without the gain (one decode instead of two): clipped noise, so
    # the check above measures the gain and can fail.
    (out,) = raw
    assert torch.equal(out.clamp(-1, 1).flatten(), wav)
    loud = (out / _CODEC_OUTPUT_GAIN[size]).clamp(-1, 1)
    loud_rms = loud.pow(2).mean().sqrt().item()
    print(f"{size} without the gain: peak {loud.abs().max().item():.3f} rms {loud_rms:.3f}")
    assert loud.abs().max().item() == 1.0 and loud_rms > 3 * rms


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_codec_is_random_codec(tiny_model, kind):
    """The level test above checks `random_codec`: every kind must save exactly that codec."""
    from safetensors.torch import load_file

    saved = load_file(Path(tiny_model(kind).source.path) / "speech_tokenizer/model.safetensors")
    expected = random_codec("tiny").state_dict()
    assert saved.keys() <= expected.keys() and len(saved) > 100
    for name, tensor in saved.items():
        assert torch.equal(tensor, expected[name]), name
