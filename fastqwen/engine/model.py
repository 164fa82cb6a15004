"""The weights of a loaded `qwen_tts` model and the static caches, as the engine reads them.

Nothing is copied: every tensor is a view of the original modules' parameters, except
that Q, K and V (and gate and up) are fused into one matrix each and the original Linear
modules are re-pointed at views of it, so nothing is stored twice and the reference still
runs on the same weights.

A layer's weights and sizes are NamedTuples, which Dynamo treats as plain tuples: a
compiled `decoder_layer` is guarded on the shapes of the tensors and the values of the
numbers, never on which layer they came from, so one compiled graph serves every layer of
a decoder (tests/test_compiled_kernels.py checks it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch

from fastqwen.constants import NUM_CODEBOOKS, NUM_CONTROL_CODES
from fastqwen.engine.cache import StaticKVCache
from fastqwen.engine.layers import Positions, RopeTable


class LayerWeights(NamedTuple):
    """One decoder layer's weights."""

    input_norm: torch.Tensor  # (H,)
    qkv: torch.Tensor  # ((Hq + 2 Hkv) D, H)
    q_norm: torch.Tensor  # (D,)
    k_norm: torch.Tensor  # (D,)
    o: torch.Tensor  # (H, Hq D)
    post_norm: torch.Tensor  # (H,)
    gate_up: torch.Tensor  # (2 I, H)
    down: torch.Tensor  # (H, I)


class LayerDims(NamedTuple):
    """The sizes every layer of a decoder shares."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    eps: float  # RMSNorm epsilon

    @property
    def rep(self) -> int:
        """Query heads per KV head (GQA)."""
        return self.num_heads // self.num_kv_heads


def _fuse(linears: list[torch.nn.Linear]) -> torch.Tensor:
    """Concatenate Linear weights along the output dim and make the modules views of it."""
    fused = torch.cat([lin.weight.data for lin in linears], dim=0)
    start = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight.data = fused[start : start + rows]
        start += rows
    return fused


@dataclass
class DecoderWeights:
    layers: list[LayerWeights]
    final_norm: torch.Tensor  # (H,)
    inv_freq: torch.Tensor  # (D / 2,) RoPE frequencies
    dims: LayerDims

    @classmethod
    def from_module(cls, model: torch.nn.Module) -> DecoderWeights:
        """Take the weights of a qwen_tts decoder (`talker.model` or `code_predictor.model`)."""
        layers = []
        for layer in model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            if attn.q_proj.bias is not None:
                raise ValueError(
                    "attention biases are not supported (attention_bias must be False)"
                )
            layers.append(
                LayerWeights(
                    input_norm=layer.input_layernorm.weight.data,
                    qkv=_fuse([attn.q_proj, attn.k_proj, attn.v_proj]),
                    q_norm=attn.q_norm.weight.data,
                    k_norm=attn.k_norm.weight.data,
                    o=attn.o_proj.weight.data,
                    post_norm=layer.post_attention_layernorm.weight.data,
                    gate_up=_fuse([mlp.gate_proj, mlp.up_proj]),
                    down=mlp.down_proj.weight.data,
                )
            )
        cfg = model.config
        dims = LayerDims(
            num_heads=cfg.num_attention_heads,
            num_kv_heads=cfg.num_key_value_heads,
            head_dim=model.layers[0].self_attn.head_dim,
            eps=cfg.rms_norm_eps,
        )
        return cls(layers, model.norm.weight.data, model.rotary_emb.inv_freq, dims)


@dataclass
class StaticModel:
    """Weights and static caches of one loaded model (views of the qwen_tts modules)."""

    talker: DecoderWeights
    predictor: DecoderWeights
    codec_embedding: torch.Tensor  # (V, H) talker codebook-0 embedding, V = TALKER_VOCAB_SIZE
    codec_head: torch.Tensor  # (V, H)
    predictor_embeddings: list[torch.Tensor]  # 15 x (CODEBOOK_SIZE, H), codebooks 1..15
    predictor_heads: list[torch.Tensor]  # 15 x (CODEBOOK_SIZE, Hp), codebooks 1..15
    to_predictor: tuple[torch.Tensor | None, torch.Tensor | None]  # small_to_mtp_projection
    talker_cache: StaticKVCache
    predictor_cache: StaticKVCache
    talker_rope: RopeTable
    predictor_positions: list[Positions]  # [0, 1] (prefill), then [2] .. [15]
    suppress_mask: torch.Tensor  # (1, V) bool
    eos_id: int

    @classmethod
    def from_qwen_tts(cls, model, max_seq_len: int, batch: int = 1) -> StaticModel:
        """Wrap a `Qwen3TTSForConditionalGeneration`; allocates the two static caches, with
        `batch` slots each."""
        talker = model.talker
        cp = talker.code_predictor
        dtype = talker.codec_head.weight.dtype
        device = talker.codec_head.weight.device
        tw = DecoderWeights.from_module(talker.model)
        pw = DecoderWeights.from_module(cp.model)
        tcfg = model.config.talker_config
        vocab = tcfg.vocab_size
        suppress = torch.zeros((1, vocab), dtype=torch.bool, device=device)
        suppress[:, vocab - NUM_CONTROL_CODES :] = True  # control codes are never audio
        suppress[:, tcfg.codec_eos_token_id] = False
        predictor_len = NUM_CODEBOOKS  # hidden + codebooks 0..14 are ever fed in

        def cache(w: DecoderWeights, length: int) -> StaticKVCache:
            d = w.dims
            shape = (len(w.layers), d.num_kv_heads, d.head_dim, length)
            return StaticKVCache(*shape, dtype=dtype, device=device, batch=batch)

        predictor_cache = cache(pw, predictor_len)
        rope = RopeTable(pw.inv_freq, predictor_len, dtype)
        spans = [torch.arange(2, device=device)] + [
            torch.tensor([j], device=device) for j in range(2, predictor_len)
        ]
        return cls(
            talker=tw,
            predictor=pw,
            codec_embedding=talker.model.codec_embedding.weight.data,
            codec_head=talker.codec_head.weight.data,
            predictor_embeddings=[e.weight.data for e in cp.model.codec_embedding],
            predictor_heads=[h.weight.data for h in cp.lm_head],
            to_predictor=_linear_weights(cp.small_to_mtp_projection),
            talker_cache=cache(tw, max_seq_len),
            predictor_cache=predictor_cache,
            talker_rope=RopeTable(tw.inv_freq, max_seq_len, dtype),
            predictor_positions=[
                Positions.at(p, rope, predictor_cache, pw.dims.rep) for p in spans
            ],
            suppress_mask=suppress,
            eos_id=int(tcfg.codec_eos_token_id),
        )

    def window(self, length: int) -> StaticModel:
        """The same model on the first `length` positions of the talker cache (views)."""
        return dataclasses.replace(self, talker_cache=self.talker_cache.window(length))

    def rows(self, count: int) -> StaticModel:
        """The same model on the first `count` slots of both caches (views)."""
        return dataclasses.replace(
            self,
            talker_cache=self.talker_cache.rows(count),
            predictor_cache=self.predictor_cache.rows(count),
        )

    def with_talker_cache(self, cache: StaticKVCache) -> StaticModel:
        """The same weights on another talker cache (a prefill's scratch rows)."""
        return dataclasses.replace(self, talker_cache=cache)

    def talker_positions(self, pos: torch.Tensor) -> Positions:
        return Positions.at(pos, self.talker_rope, self.talker_cache, self.talker.dims.rep)

    @property
    def device(self) -> torch.device:
        return self.codec_head.device

    @property
    def dtype(self) -> torch.dtype:
        return self.codec_head.dtype

    @property
    def vocab_size(self) -> int:
        """Codebook 0's vocabulary: audio codes plus control codes."""
        return int(self.codec_head.shape[0])


def kv_bytes_per_slot(model, max_seq_len: int) -> int:
    """Bytes one slot's caches take (talker over max_seq_len positions, and the code
    predictor's), from a `Qwen3TTSForConditionalGeneration`'s config, before allocating."""
    talker = model.talker
    size = talker.codec_head.weight.element_size()
    total = 0
    for decoder, length in (
        (talker.model, max_seq_len),
        (talker.code_predictor.model, NUM_CODEBOOKS),
    ):
        cfg = decoder.config
        head_dim = decoder.layers[0].self_attn.head_dim
        total += len(decoder.layers) * 2 * cfg.num_key_value_heads * head_dim * length * size
    return total


def _linear_weights(module: torch.nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(weight, bias) of a Linear; (None, None) for the Identity the 0.6B model has."""
    if isinstance(module, torch.nn.Identity):
        return None, None
    return module.weight.data, None if module.bias is None else module.bias.data
