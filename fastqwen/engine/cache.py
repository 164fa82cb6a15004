"""Preallocated KV cache, written in place at positions held in a device tensor.

Shapes never change while decoding, so a whole frame can be replayed as one CUDA
graph. Positions past the current one are hidden by a boolean mask that gives masked
keys exactly zero weight, so stale entries never leak into the output.

Keys and values of a layer share one buffer, so a step writes both with one scatter.
"""

from __future__ import annotations

import torch


class StaticKVCache:
    """Keys and values for every layer: one buffer of shape (L, 2, 1, H_kv, S, D)."""

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        max_len: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
    ):
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        shape = (num_layers, 2, 1, num_kv_heads, max_len, head_dim)
        self.kv = torch.zeros(shape, dtype=dtype, device=device)
        self.positions = torch.arange(max_len, device=device)  # (S,)

    def window(self, length: int) -> StaticKVCache:
        """The first `length` positions as a cache of their own (views, no copy).

        Attention reads every position of the buffer it is given, masked or not, so a
        short utterance runs on a short window: one captured graph per window length.
        """
        if not 1 <= length <= self.max_len:
            raise ValueError(f"window length must be in [1, {self.max_len}], got {length}")
        view = object.__new__(StaticKVCache)
        view.kv = self.kv[..., :length, :]
        view.positions = self.positions[:length]
        return view

    @property
    def max_len(self) -> int:
        return int(self.kv.shape[-2])

    def layer(self, i: int) -> torch.Tensor:
        """Layer i's (2, 1, H_kv, S, D) buffer: keys at [0], values at [1]."""
        return self.kv[i]

    def causal_mask(self, pos: torch.Tensor) -> torch.Tensor:
        """(1, 1, T, S) boolean mask: query at pos[t] sees keys at positions <= pos[t]."""
        return (self.positions[None, :] <= pos[:, None])[None, None]
