"""Random-weight Qwen3-TTS checkpoints with the real on-disk layout.

No machine here reaches the Hugging Face hub, so tests and benchmarks run on checkpoints
built from the official `qwen_tts` config and model classes, with the real special ids and
speaker/language tables (`fastqwen.constants`), the real dimensions for `0.6b`/`1.7b`, and a
`tiny` size that runs on a 2-core CPU. `qwen_tts.Qwen3TTSModel.from_pretrained(dir)` loads
the result unchanged (layout: ../shared/qwen3-tts-facts.md, "Offline checkpoints").

Strategy:
- Modules are created under `torch.device(device)` with torch/HF init turned off, then every
  tensor is filled from a generator seeded by (seed, tensor name): a build is deterministic
  for a given (size, kind, seed, device type) and takes seconds on CUDA even at 1.7B.
- Scales keep activations sane: linear and embedding weights N(0, 0.02); output heads
  N(0, 1/sqrt(in)) so logits spread by about 1 (neither flat nor peaked); convolutions
  fan-in scaled; codebooks N(0, 1); norms at 1.
- The codec's last conv is shrunk per size (`_CODEC_OUTPUT_GAIN`) so decoded noise sits
  near RMS 0.15, well below full scale, instead of clipping at +-1.
- The talker's EOS row (`codec_head.weight[2150]`) is zero, so the EOS logit is exactly 0:
  below the top-50 of ~2048 random logits, so runs with the reference sampling defaults do
  not stop early. A test of EOS handling must raise that row itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import zlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from fastqwen import constants as C

log = logging.getLogger(__name__)

MARKER_FILE = "fastqwen_random.json"  # written last: its presence means "complete"
BUILDER_VERSION = 4  # bump when a change here alters the files, so caches rebuild
TEXT_VOCAB_SIZE = 151_936
ASSISTANT_TOKEN_ID = 77091  # "assistant" in the Qwen2 vocabulary (real config)

# Reference defaults (qwen_tts `_merge_generate_kwargs`), as the checkpoint ships them.
GENERATION_DEFAULTS: dict[str, object] = {
    "do_sample": True, "top_k": 50, "top_p": 1.0, "temperature": 0.9, "repetition_penalty": 1.05,
    "subtalker_dosample": True, "subtalker_top_k": 50, "subtalker_top_p": 1.0,
    "subtalker_temperature": 0.9, "max_new_tokens": 2048,
}  # fmt: skip

# fmt: off
# Talker dims: real values from the facts file. `tiny` keeps the ratios that select code
# paths: text_hidden != hidden (as in 0.6B) and predictor hidden != talker hidden (as in
# 1.7B, so `small_to_mtp_projection` is a real Linear, not an Identity).
_TALKER = {
    "tiny": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, text_hidden_size=32),
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                 text_hidden_size=2048),
    "1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                 text_hidden_size=2048),
}
_PREDICTOR_REAL = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=5,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128)
_PREDICTOR = {
    "tiny": dict(hidden_size=32, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16),
    "0.6b": _PREDICTOR_REAL, "1.7b": _PREDICTOR_REAL,
}
_SPEAKER_REAL = dict(enc_channels=[512, 512, 512, 512, 1536], enc_attention_channels=128,
                     enc_res2net_scale=8, enc_se_channels=128)
_SPEAKER = {
    "tiny": dict(enc_channels=[32, 32, 32, 32, 96], enc_attention_channels=16,
                 enc_res2net_scale=4, enc_se_channels=16),
    "0.6b": _SPEAKER_REAL, "1.7b": _SPEAKER_REAL,
}
# Codec (speech_tokenizer/): the published 12 Hz config. tiny shrinks widths and depths but
# keeps 16 x 2048 codebooks, 24 kHz and 1920 samples a frame (decoder 8*5*4*3 * 2*2,
# encoder 8*6*5*4 * 2).
_DECODER_COMMON = dict(codebook_size=C.CODEBOOK_SIZE, num_quantizers=C.NUM_CODEBOOKS,
                       upsample_rates=[8, 5, 4, 3], upsampling_ratios=[2, 2], sliding_window=72,
                       max_position_embeddings=8000, rope_theta=10000, rms_norm_eps=1e-5,
                       layer_scale_initial_scale=0.01, hidden_act="silu", attention_bias=False)
_ENCODER_COMMON = dict(sampling_rate=C.SAMPLE_RATE, frame_rate=C.FRAME_RATE_HZ, audio_channels=1,
                       num_residual_layers=1, upsampling_ratios=[8, 6, 5, 4], kernel_size=7,
                       last_kernel_size=3, residual_kernel_size=3, dilation_growth_rate=2,
                       use_causal_conv=True, pad_mode="constant", compress=2,
                       codebook_size=C.CODEBOOK_SIZE, num_quantizers=32,
                       num_semantic_quantizers=1, hidden_act="gelu", max_position_embeddings=8000,
                       norm_eps=1e-5, rope_theta=10000.0, sliding_window=250,
                       layer_scale_initial_scale=0.01, use_cache=False)
_DECODER_REAL = dict(codebook_dim=512, latent_dim=1024, hidden_size=512, intermediate_size=1024,
                     head_dim=64, num_attention_heads=16, num_key_value_heads=16,
                     num_hidden_layers=8, decoder_dim=1536)
_ENCODER_REAL = dict(hidden_size=512, num_filters=64, codebook_dim=256,
                     vector_quantization_hidden_dimension=256, upsample_groups=512,
                     num_hidden_layers=8, intermediate_size=2048, num_attention_heads=8,
                     num_key_value_heads=8, head_dim=64)
_CODEC = {  # size: (decoder, encoder)
    "tiny": (dict(codebook_dim=32, latent_dim=32, hidden_size=32, intermediate_size=64,
                  head_dim=16, num_attention_heads=2, num_key_value_heads=2, num_hidden_layers=1,
                  decoder_dim=32),
             dict(hidden_size=32, num_filters=4, codebook_dim=16,
                  vector_quantization_hidden_dimension=16, upsample_groups=32,
                  num_hidden_layers=1, intermediate_size=64, num_attention_heads=2,
                  num_key_value_heads=2, head_dim=16)),
    "0.6b": (_DECODER_REAL, _ENCODER_REAL), "1.7b": (_DECODER_REAL, _ENCODER_REAL),
}
# Unit-scale convs leave the decoder's waveform at RMS ~12 (peaks ~65) at tiny widths and
# RMS ~55 (peaks ~270) at the real ones, so nearly every sample would clip at +-1. The last
# conv is scaled by these gains for RMS ~0.14-0.19 with peaks below 1: audible, unclipped
# noise that does not hurt on play and keeps streamed-vs-full comparisons meaningful.
_CODEC_OUTPUT_GAIN = {"tiny": 0.015, "0.6b": 0.0025, "1.7b": 0.0025}
_MODEL_SIZE_TAG = {"tiny": "tiny", "0.6b": "0b6", "1.7b": "1b7"}
_TALKER_COMMON = dict(
    vocab_size=3072, num_code_groups=C.NUM_CODEBOOKS, text_vocab_size=TEXT_VOCAB_SIZE,
    max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1_000_000, hidden_act="silu",
    attention_bias=False, codec_pad_id=C.CODEC_PAD_ID, codec_bos_id=C.CODEC_BOS_ID,
    codec_eos_token_id=C.CODEC_EOS_ID, codec_think_id=C.CODEC_THINK_ID,
    codec_nothink_id=C.CODEC_NOTHINK_ID, codec_think_bos_id=C.CODEC_THINK_BOS_ID,
    codec_think_eos_id=C.CODEC_THINK_EOS_ID, codec_language_id=dict(C.LANGUAGE_IDS),
)
_PREDICTOR_COMMON = dict(
    vocab_size=C.CODEBOOK_SIZE, num_code_groups=C.NUM_CODEBOOKS, max_position_embeddings=65536,
    rms_norm_eps=1e-6, rope_theta=1_000_000, hidden_act="silu",
)
_SPEAKER_COMMON = dict(mel_dim=128, enc_kernel_sizes=[5, 3, 3, 3, 1],
                       enc_dilations=[1, 2, 3, 4, 1], sample_rate=C.SAMPLE_RATE)
_TOP_COMMON = dict(
    tokenizer_type="qwen3_tts_tokenizer_12hz", im_start_token_id=C.IM_START_ID,
    im_end_token_id=C.IM_END_ID, tts_pad_token_id=C.TTS_PAD_ID, tts_bos_token_id=C.TTS_BOS_ID,
    tts_eos_token_id=C.TTS_EOS_ID, assistant_token_id=ASSISTANT_TOKEN_ID,
)
# fmt: on


def _check(size: str, kind: str) -> None:
    if size not in C.MODEL_SIZES:
        raise ValueError(f"unknown checkpoint size {size!r}; choose one of {C.MODEL_SIZES}")
    if kind not in C.MODEL_KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; choose one of {C.MODEL_KINDS}")


def _mrope_section(head_dim: int) -> list[int]:
    """[24, 20, 20] scaled to sum to head_dim/2 (real head_dim 128), by largest remainder."""
    exact = [x * (head_dim // 2) / 64 for x in (24, 20, 20)]
    sec = [int(x) for x in exact]
    for i in sorted(range(3), key=lambda i: sec[i] - exact[i])[: head_dim // 2 - sum(sec)]:
        sec[i] += 1
    return sec


def model_config(size: str, kind: str) -> dict:
    """The `config.json` content (as kwargs for `Qwen3TTSConfig`) for a size and kind."""
    _check(size, kind)
    custom = kind == "custom_voice"
    head_dim = _TALKER[size]["head_dim"]
    rope = {"mrope_section": _mrope_section(head_dim), "interleaved": True, "rope_type": "default"}
    talker = dict(
        _TALKER[size],
        **_TALKER_COMMON,
        rope_scaling=rope,
        # qwen_tts indexes these dicts directly: base/voice_design get empty dicts, not None.
        spk_id=dict(C.SPEAKER_IDS) if custom else {},
        spk_is_dialect={s: C.SPEAKER_DIALECTS.get(s, False) for s in C.SPEAKER_IDS}
        if custom
        else {},
        code_predictor_config=dict(_PREDICTOR[size], **_PREDICTOR_COMMON),
    )
    # enc_dim = talker hidden: the x-vector is used as a talker input embedding.
    speaker = dict(_SPEAKER[size], **_SPEAKER_COMMON, enc_dim=talker["hidden_size"])
    return dict(
        _TOP_COMMON,
        talker_config=talker,
        speaker_encoder_config=speaker,
        tts_model_size=_MODEL_SIZE_TAG[size],
        tts_model_type=kind,
    )


def codec_config(size: str) -> dict:
    """The `speech_tokenizer/config.json` content for a size."""
    _check(size, "base")
    decoder, encoder = _CODEC[size]
    return dict(
        encoder_valid_num_quantizers=C.NUM_CODEBOOKS, input_sample_rate=C.SAMPLE_RATE,
        output_sample_rate=C.SAMPLE_RATE, decode_upsample_rate=C.SAMPLES_PER_FRAME,
        encode_downsample_rate=C.SAMPLES_PER_FRAME,
        decoder_config=dict(_DECODER_COMMON, **decoder),
        encoder_config=dict(_ENCODER_COMMON, **encoder),
    )  # fmt: skip


# ---------------------------------------------------------------- weights


@contextlib.contextmanager
def _fast_init(device: str, dtype: torch.dtype) -> Iterator[None]:
    """Create modules directly on `device` in `dtype` with every init skipped."""
    from transformers.modeling_utils import no_init_weights

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights(), torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def _tensor_seed(seed: int, name: str) -> int:
    """Per-tensor seeds: values do not depend on module order or on other tensors."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def _fill_(model: nn.Module, seed: int, output_heads: tuple[str, ...] = ()) -> None:
    """Overwrite every parameter (and codebook buffer) of `model` deterministically.

    `_fast_init` leaves torch.nn layers uninitialised, so each one must be covered here;
    custom modules (RMSNorm, SnakeBeta, LayerScale...) already hold the constants their
    constructors set (ones/zeros/full), which are the values we want.
    """
    gen = torch.Generator(device=next(model.parameters()).device)

    def normal_(name: str, t: torch.Tensor, std: float) -> None:
        gen.manual_seed(_tensor_seed(seed, name))
        t.normal_(0.0, std, generator=gen)

    linear_like = (nn.Linear, nn.Embedding, nn.Conv1d, nn.ConvTranspose1d)
    norms = (nn.LayerNorm, nn.BatchNorm1d, nn.GroupNorm)
    with torch.no_grad():
        for mod_name, mod in model.named_modules():
            prefix = f"{mod_name}." if mod_name else ""
            params = dict(mod.named_parameters(recurse=False))
            if isinstance(mod, linear_like):
                w = params["weight"]
                if isinstance(mod, nn.Conv1d):
                    std = (w.shape[1] * w.shape[2]) ** -0.5  # fan-in: conv stacks keep unit scale
                elif isinstance(mod, nn.ConvTranspose1d):
                    std = (w.shape[0] * w.shape[2] / mod.stride[0]) ** -0.5
                elif mod_name.startswith(output_heads):
                    std = w.shape[1] ** -0.5  # logits spread ~1 from unit-RMS hidden states
                else:
                    std = 0.02
                normal_(prefix + "weight", w, std)
                if params.get("bias") is not None:
                    params["bias"].zero_()
            elif isinstance(mod, norms):
                for pname, value in (("weight", 1.0), ("bias", 0.0)):
                    if params.get(pname) is not None:
                        params[pname].fill_(value)
            elif params and type(mod).__module__.startswith("torch.nn"):
                raise TypeError(f"no init rule for torch layer {prefix}{type(mod).__name__}")
            # Codebooks are zeros at construction; distinct entries make encode/decode real.
            for name in ("embedding_sum", "embed_sum"):
                t = params.get(name, mod._buffers.get(name))
                if t is not None:
                    normal_(prefix + name, t, 1.0)


# ---------------------------------------------------------------- text tokenizer

# Words that become single tokens (with and without a leading space, and capitalised), so
# English text tokenizes at roughly the real rate. The role words must be single tokens:
# qwen_tts slices the prompt by token position.
_WORDS = (
    "the of and to a in is it you that he was for on are with as his they be at one have this "
    "from or had by word but what some we can out other were all there when up use your how said "
    "an each she which do their time if will way about many then them would like so these her "
    "make see him two has look more day could go come did no most people my over know than call "
    "first who may down been now find new work take get place made where after back only year "
    "good me give our very through just think say help right old too same tell three want well "
    "also hello speech voice text model audio test quick brown fox jumps lazy dog today"
).split()
_ROLE_WORDS = ("assistant", "user", "system")
# Special tokens at their real ids (151643..151673); unknown names in between are placeholders.
_SPECIALS = {
    151643: "<|endoftext|>", C.IM_START_ID: "<|im_start|>", C.IM_END_ID: "<|im_end|>",
    C.TTS_PAD_ID: "<|tts_pad|>", C.TTS_BOS_ID: "<|tts_bos|>", C.TTS_EOS_ID: "<|tts_eos|>",
}  # fmt: skip


def _bpe_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level vocabulary with real ids for single bytes (Qwen2/GPT-2 order)."""
    from transformers.models.qwen2.tokenization_qwen2 import bytes_to_unicode

    byte_map = bytes_to_unicode()
    vocab = {ch: i for i, ch in enumerate(byte_map.values())}  # "\n" -> 198, " " -> 220
    merges: list[tuple[str, str]] = []
    words = [f"Ġ{w}" for w in _WORDS] + [f"Ġ{w.capitalize()}" for w in _WORDS]
    words += [w.capitalize() for w in _WORDS] + list(_ROLE_WORDS)
    pinned = {"assistant": ASSISTANT_TOKEN_ID}
    next_id = len(vocab)
    for word in words:
        for k in range(2, len(word) + 1):  # left-to-right chain: "Ġt"+"h" -> "Ġth", ...
            piece = word[:k]
            if piece in vocab:
                continue
            merges.append((word[: k - 1], word[k - 1]))
            vocab[piece] = pinned.get(piece, next_id)
            next_id += piece not in pinned
    used = set(vocab.values())
    # Unreachable placeholders keep ids contiguous, so added tokens land on their real ids.
    vocab.update({f"<|fastqwen_unused_{i}|>": i for i in range(min(_SPECIALS)) if i not in used})
    return vocab, merges


def write_text_tokenizer(out_dir: str | Path) -> None:
    """Write a `Qwen2TokenizerFast` (tokenizer.json etc.) with the real special token ids."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers as pre
    from transformers import Qwen2TokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    vocab, merges = _bpe_vocab_and_merges()
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    # Same shape as the real tokenizer.json: qwen_tts (fix_mistral_regex) replaces element [0].
    tok.pre_tokenizer = pre.Sequence([
        pre.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    for i in range(min(_SPECIALS), C.TTS_EOS_ID + 1):
        content = _SPECIALS.get(i, f"<|fastqwen_special_{i}|>")
        tok.add_special_tokens([AddedToken(content, normalized=False, special=True)])
        if tok.token_to_id(content) != i:
            raise RuntimeError(f"{content} got id {tok.token_to_id(content)}, not {i}")
    fast = Qwen2TokenizerFast(
        tokenizer_object=tok, unk_token=None, bos_token=None, eos_token="<|im_end|>",
        pad_token="<|endoftext|>", model_max_length=131072, clean_up_tokenization_spaces=False,
    )  # fmt: skip
    fast.save_pretrained(str(out_dir))


# ---------------------------------------------------------------- build


def random_codec(size: str, *, seed: int = 0, device: str = "cpu") -> nn.Module:
    """The speech tokenizer (`Qwen3TTSTokenizerV2Model`) a checkpoint of `size` and `seed` holds.

    Exactly what `build_random_checkpoint` saves under speech_tokenizer/ for every kind (the
    codec does not depend on the kind), so its audio level can be checked without building
    the talker: seconds on CPU even at the real sizes.
    """
    from qwen_tts.core import Qwen3TTSTokenizerV2Config, Qwen3TTSTokenizerV2Model

    config = Qwen3TTSTokenizerV2Config(**codec_config(size))
    with _fast_init(device, torch.float32):  # the published codec is float32
        codec = Qwen3TTSTokenizerV2Model(config)
    _fill_(codec, seed + 1)
    with torch.no_grad():
        codec.decoder.decoder[-1].conv.weight.mul_(_CODEC_OUTPUT_GAIN[size])
    return codec


def _save_codec(size: str, out_dir: Path, seed: int, device: str) -> None:
    from transformers import EncodecFeatureExtractor

    random_codec(size, seed=seed, device=device).save_pretrained(str(out_dir))
    extractor = EncodecFeatureExtractor(feature_size=1, sampling_rate=C.SAMPLE_RATE)
    extractor.save_pretrained(str(out_dir))


def _patch_config_json(path: Path) -> None:
    """Undo what save_pretrained adds but the qwen_tts config classes reject on load."""
    cfg = json.loads(path.read_text())
    # Qwen3TTSSpeakerEncoderConfig.__init__ takes no **kwargs.
    cfg["speaker_encoder_config"].pop("model_type", None)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def build_random_checkpoint(
    size: str, kind: str, out_dir: str | Path, *, seed: int = 0, device: str = "cpu"
) -> Path:
    """Build a checkpoint `qwen_tts.Qwen3TTSModel.from_pretrained` loads; return its directory.

    Args:
        size: "tiny", "0.6b" or "1.7b".
        kind: "custom_voice", "base" or "voice_design".
        out_dir: directory to create or fill (existing files are overwritten).
        seed: weights are a function of (size, kind, seed, device type).
        device: where to create and fill tensors; "cuda" makes 1.7B take seconds.
    """
    from qwen_tts.core.models import Qwen3TTSConfig, Qwen3TTSForConditionalGeneration

    _check(size, kind)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER_FILE).unlink(missing_ok=True)  # a rebuild is incomplete until the end
    log.info("building random %s %s checkpoint in %s (seed %d, %s)", size, kind, out, seed, device)

    config = Qwen3TTSConfig(**model_config(size, kind))
    # The published talker weights are bfloat16; so are ours.
    with _fast_init(device, torch.bfloat16):
        model = Qwen3TTSForConditionalGeneration(config)
    _fill_(model, seed, output_heads=("talker.codec_head", "talker.code_predictor.lm_head"))
    with torch.no_grad():
        model.talker.codec_head.weight[C.CODEC_EOS_ID].zero_()  # see module docstring
    model.save_pretrained(str(out), safe_serialization=True)
    del model
    _patch_config_json(out / "config.json")
    # Overwrites the generic file save_pretrained wrote: qwen_tts reads its sampling defaults here.
    (out / "generation_config.json").write_text(json.dumps(GENERATION_DEFAULTS, indent=2) + "\n")
    write_text_tokenizer(out)
    _save_codec(size, out / "speech_tokenizer", seed, device)
    marker = dict(
        size=size, kind=kind, seed=seed, device_type=torch.device(device).type,
        builder_version=BUILDER_VERSION, torch_version=torch.__version__,
    )  # fmt: skip
    (out / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
    return out


def read_marker(path: str | Path) -> dict | None:
    """The build record of a random checkpoint directory, or None for other directories."""
    marker = Path(path) / MARKER_FILE
    return json.loads(marker.read_text()) if marker.is_file() else None
