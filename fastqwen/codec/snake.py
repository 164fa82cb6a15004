"""The codec's vocoder with each SnakeBeta fused into the causal conv after it (CUDA, Triton).

Why: on an H200 the batched codec's conv stage (`batch._waveform`: the upsampling and
vocoder of qwen_tts's `Qwen3TTSTokenizerV2Decoder`) tops out near 900 audio-seconds per
second in bf16, and most of its GPU time is elementwise, not convolution:

- `SnakeBeta` (`x + 1 / (exp(beta) + 1e-9) * sin(x * exp(alpha)) ** 2`) runs as about five
  full-tensor kernels, re-deriving its per-channel constants on every call;
- every `Qwen3TTSTokenizerV2CausalConvNet` copies its input through `F.pad` (left padding
  only: a stride-1 conv's extra right padding is 0);
- the residual add.

Here one Triton launch reads the activation once and writes SnakeBeta of it, with a
zeroed left margin of the conv's padding, into a buffer that `F.conv1d` then reads
directly: one elementwise pass instead of about six. The per-channel constants (exp(alpha)
and 1 / (exp(beta) + 1e-9), float32) are computed once per module and cached. Transposed
convs, the ConvNeXt upsampling blocks and the first vocoder conv run as the reference runs
them (the modules are called), and the convolutions stay cuDNN's.

Numerics: the kernel evaluates SnakeBeta in float32 and rounds once to the tensor's dtype,
where the reference rounds after each bf16 op. Audio therefore differs from `_waveform`'s
within the codec's own rounding (float32 inputs: ~1e-6); codes are never affected.

`fast_waveform` runs the kernel on CUDA tensors; on the CPU it runs `_waveform` instead,
unless Triton's interpreter is on (TRITON_INTERPRET=1, how the tests run the kernel).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import (
    Qwen3TTSTokenizerV2CausalConvNet as CausalConv,
)
from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import (
    Qwen3TTSTokenizerV2CausalTransConvNet as CausalTransConv,
)
from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import (
    Qwen3TTSTokenizerV2DecoderDecoderBlock as DecoderBlock,
)
from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import (
    Qwen3TTSTokenizerV2DecoderDecoderResidualUnit as ResidualUnit,
)
from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import SnakeBeta
from triton.runtime.interpreter import InterpretedFunction

from fastqwen.codec.batch import _waveform

BLOCK = 1024  # output columns per program: a long contiguous run of one (b, c) row


@triton.jit(do_not_specialize=["C", "T"])  # one compile per PAD, whatever the length
def _snake_kernel(x_ptr, alpha_ptr, inv_beta_ptr, bias_ptr, out_ptr, C, T, PAD: tl.constexpr,
                  HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    """out[b, c, :PAD] = 0, out[b, c, PAD + t] = SnakeBeta(x[b, c, t] (+ bias[c])); one
    program per (row b * C + c, block of output columns). The bias is the previous conv's,
    left out of that conv so that it costs no pass of its own."""
    row = tl.program_id(0)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # output columns
    width = T + PAD
    t = j - PAD
    inside = (t >= 0) & (j < width)
    c = row % C
    alpha = tl.load(alpha_ptr + c)  # exp(alpha[c])
    inv_beta = tl.load(inv_beta_ptr + c)  # 1 / (exp(beta[c]) + 1e-9)
    row64 = row.to(tl.int64)  # B * C * T passes 2^31 at batch 128 of 58-frame spans
    # the margin loads 0, and SnakeBeta(0) = 0: the conv's zero padding
    x = tl.load(x_ptr + row64 * T + t, mask=inside, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x = tl.where(inside, x + tl.load(bias_ptr + c).to(tl.float32), 0.0)
    s = tl.sin(x * alpha)
    y = x + inv_beta * (s * s)
    tl.store(out_ptr + row64 * width + j, y.to(out_ptr.dtype.element_ty), mask=j < width)


@triton.jit(do_not_specialize=["C", "T"])
def _bias_residual_kernel(y_ptr, bias_ptr, res_ptr, C, T, BLOCK: tl.constexpr):
    """y[b, c, t] += bias[c] + res[b, c, t], in place: a residual unit's 1x1 conv output
    gets its bias and the unit's input in one pass."""
    row = tl.program_id(0)
    t = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = t < T
    offset = row.to(tl.int64) * T + t
    y = tl.load(y_ptr + offset, mask=mask, other=0.0).to(tl.float32)
    res = tl.load(res_ptr + offset, mask=mask, other=0.0).to(tl.float32)
    y = y + tl.load(bias_ptr + row % C).to(tl.float32) + res
    tl.store(y_ptr + offset, y.to(y_ptr.dtype.element_ty), mask=mask)


@dataclass(frozen=True)
class SnakeConstants:
    """One SnakeBeta's per-channel constants, float32 (C,), and what they were made from
    (`stamp`: the parameters' storage, device and version), so edited or moved weights
    are noticed."""

    alpha: torch.Tensor  # exp(alpha)
    inv_beta: torch.Tensor  # 1 / (exp(beta) + 1e-9)
    stamp: tuple


_constants: weakref.WeakKeyDictionary[SnakeBeta, SnakeConstants] = weakref.WeakKeyDictionary()


def _stamp(snake: SnakeBeta) -> tuple:
    a, b = snake.alpha, snake.beta
    return (a.data_ptr(), b.data_ptr(), a.device, a._version, b._version)


def snake_constants(snake: SnakeBeta) -> SnakeConstants:
    """`snake`'s constants, computed on first use and again only if its weights change."""
    stamp = _stamp(snake)
    cached = _constants.get(snake)
    if cached is not None and cached.stamp == stamp:
        return cached
    with torch.no_grad():
        alpha = snake.alpha.detach().float().exp().contiguous()
        inv_beta = (1.0 / (snake.beta.detach().float().exp() + snake.no_div_by_zero)).contiguous()
    cached = SnakeConstants(alpha, inv_beta, stamp)
    _constants[snake] = cached
    return cached


def snake(
    module: SnakeBeta, x: torch.Tensor, pad: int = 0, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """SnakeBeta of `x` (B, C, T) (plus a per-channel `bias`, the previous conv's) in one
    launch: (B, C, pad + T), the first `pad` columns zero (a causal conv's left padding),
    in x's dtype from float32 maths."""
    x = x.contiguous()
    rows, channels, length = x.shape[0] * x.shape[1], x.shape[1], x.shape[2]
    if module.alpha.shape != (channels,):
        raise ValueError(
            f"SnakeBeta of {module.alpha.shape[0]} channels given x of shape {x.shape}"
        )
    consts = snake_constants(module)
    out = torch.empty((x.shape[0], channels, pad + length), dtype=x.dtype, device=x.device)
    grid = (rows, triton.cdiv(pad + length, BLOCK))
    _snake_kernel[grid](x, consts.alpha, consts.inv_beta, consts.alpha if bias is None else bias,
                        out, channels, length, PAD=pad, HAS_BIAS=bias is not None,
                        BLOCK=BLOCK, num_warps=4)  # fmt: skip
    return out


def add_bias_residual(y: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """y += bias[c] + residual, in place, one launch; y and residual (B, C, T) contiguous."""
    if y.shape != residual.shape or not (y.is_contiguous() and residual.is_contiguous()):
        raise ValueError(f"add_bias_residual: y {tuple(y.shape)}, residual {tuple(residual.shape)}")
    grid = (y.shape[0] * y.shape[1], triton.cdiv(y.shape[2], BLOCK))
    _bias_residual_kernel[grid](y, bias, residual, y.shape[1], y.shape[2], BLOCK=BLOCK,
                                num_warps=4)  # fmt: skip
    return y


def snake_conv(
    act: SnakeBeta,
    conv: CausalConv,
    x: torch.Tensor,
    bias: torch.Tensor | None = None,
    conv_bias: bool = True,
) -> torch.Tensor:
    """`conv(act(x + bias))` for a stride-1 causal conv: SnakeBeta into the conv's padded
    input, then the bare convolution (no `F.pad` copy); `conv_bias=False` leaves the
    conv's own bias for the caller to fold into what comes next."""
    inner = conv.conv
    hidden = snake(act, x, pad=conv.padding, bias=bias)  # (B, C, padding + T)
    return F.conv1d(
        hidden, inner.weight, inner.bias if conv_bias else None, dilation=inner.dilation,
        groups=inner.groups,
    )  # fmt: skip


OUT_CONV_CHANNELS = 8  # the output conv's one channel, padded: see `_out_conv_weight`
_out_weights: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _out_conv_weight(conv: CausalConv) -> torch.Tensor:
    """The output conv's weight (1, C, k) zero-padded to `OUT_CONV_CHANNELS` outputs.

    With one output channel cuDNN falls back to a generic kernel (`implicit_convolve_sgemm`)
    that took 41 of the 158 ms of a 64-span decode on an H200; with eight it uses its
    tensor-core kernels. Output channel 0 is the same sum; the others are discarded."""
    weight = conv.conv.weight
    stamp = (weight.data_ptr(), weight.device, weight._version)
    cached = _out_weights.get(conv)
    if cached is None or cached[0] != stamp:
        padded = weight.new_zeros((OUT_CONV_CHANNELS, *weight.shape[1:]))
        padded[: weight.shape[0]] = weight.detach()
        cached = (stamp, padded)
        _out_weights[conv] = cached
    return cached[1]


def _check(module, expected: type, name: str) -> None:
    if not isinstance(module, expected):
        raise ValueError(
            f"{name} is {type(module).__name__}, expected {expected.__name__}: fast_waveform "
            "knows qwen_tts's 12 Hz decoder layout only; use codec.batch._waveform"
        )
    if isinstance(module, CausalConv) and module.stride != 1:
        raise ValueError(f"{name} has stride {module.stride}; fused convs must have stride 1")


def vocoder_layout(decoder) -> tuple[CausalConv, list[DecoderBlock], SnakeBeta, CausalConv]:
    """`decoder.decoder` checked against the layout `fast_waveform` fuses: its first conv,
    the upsampling blocks, the last SnakeBeta and the output conv. A ValueError names the
    first module that differs."""
    layers = list(decoder.decoder)
    if len(layers) < 3:
        raise ValueError(
            f"decoder.decoder has {len(layers)} modules, expected conv, blocks, snake, conv"
        )
    first, *blocks, act, last = layers
    _check(first, CausalConv, "decoder.decoder[0]")
    for i, block in enumerate(blocks, start=1):
        name = f"decoder.decoder[{i}]"
        _check(block, DecoderBlock, name)
        parts = list(block.block)
        if len(parts) != 5:
            raise ValueError(f"{name}.block has {len(parts)} modules, expected 5")
        _check(parts[0], SnakeBeta, f"{name}.block[0]")
        _check(parts[1], CausalTransConv, f"{name}.block[1]")
        for k, unit in enumerate(parts[2:], start=2):
            unit_name = f"{name}.block[{k}]"
            _check(unit, ResidualUnit, unit_name)
            for part, kind in (("act1", SnakeBeta), ("conv1", CausalConv), ("act2", SnakeBeta),
                               ("conv2", CausalConv)):  # fmt: skip
                _check(getattr(unit, part, None), kind, f"{unit_name}.{part}")
    _check(act, SnakeBeta, f"decoder.decoder[{len(layers) - 2}]")
    _check(last, CausalConv, f"decoder.decoder[{len(layers) - 1}]")
    return first, blocks, act, last


def kernel_runs_on(device: torch.device) -> bool:
    """True on CUDA, and anywhere under Triton's interpreter (the tests)."""
    return device.type == "cuda" or isinstance(_snake_kernel, InterpretedFunction)


def fast_waveform(decoder, latents: torch.Tensor) -> torch.Tensor:
    """`batch._waveform(decoder, latents)` with each SnakeBeta fused into the conv after it:
    (B, latent, W) -> (B, 1, W * 1920). Off CUDA (interpreter aside) it is `_waveform`."""
    if not kernel_runs_on(latents.device):
        return _waveform(decoder, latents)
    first, blocks, act, last = vocoder_layout(decoder)
    hidden = latents
    for stage in decoder.upsample:  # transposed conv + ConvNeXt, as the reference
        for module in stage:
            hidden = module(hidden)
    # the first conv (no activation before it): its bias goes into the next SnakeBeta
    inner = first.conv
    hidden = F.conv1d(
        F.pad(hidden, (first.padding, 0)), inner.weight, None, dilation=inner.dilation
    )
    bias = inner.bias
    for block in blocks:
        act_in, up, *units = block.block
        hidden = up(snake(act_in, hidden, bias=bias))  # (B, C / 2, T * rate), its own bias
        bias = None
        for unit in units:
            branch = snake_conv(unit.act1, unit.conv1, hidden, conv_bias=False)
            out = snake_conv(unit.act2, unit.conv2, branch, bias=unit.conv1.conv.bias,
                             conv_bias=False)  # fmt: skip
            if unit.conv2.conv.bias is None:
                hidden = out.add_(hidden)
            else:
                hidden = add_bias_residual(out, unit.conv2.conv.bias, hidden)
    # the output conv: one channel, computed as OUT_CONV_CHANNELS (see _out_conv_weight)
    wave = F.conv1d(snake(act, hidden, pad=last.padding), _out_conv_weight(last))[:, :1]
    if last.conv.bias is not None:
        wave = wave + last.conv.bias.view(1, -1, 1)
    return wave.clamp(min=-1, max=1)  # (B, 1, W * 1920)


__all__ = [
    "OUT_CONV_CHANNELS",
    "SnakeConstants",
    "add_bias_residual",
    "fast_waveform",
    "kernel_runs_on",
    "snake",
    "snake_conv",
    "vocoder_layout",
]
