"""Preallocated KV cache for a batch of slots, written in place at positions held in a
device tensor.

Shapes never change while decoding, so a whole frame can be replayed as one CUDA
graph. Positions past a row's current one are hidden by a boolean mask that gives masked
keys exactly zero weight, so stale entries (a previous request's, in a reused slot)
never leak into the output.

Keys and values of a layer share one buffer, so a step writes both with one scatter.
Every slot (batch row) has its own positions: a request joins at position 0 of its
slot whatever the other slots are doing.
"""

from __future__ import annotations

import torch


class StaticKVCache:
    """Keys and values for every layer: one buffer of shape (L, 2, B, H_kv, S, D)."""

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        max_len: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
        batch: int = 1,
    ):
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        shape = (num_layers, 2, batch, num_kv_heads, max_len, head_dim)
        self.kv = torch.zeros(shape, dtype=dtype, device=device)
        self.positions = torch.arange(max_len, device=device)  # (S,)
        self.symbolic_length = False

    def _view(self, kv: torch.Tensor, positions: torch.Tensor) -> StaticKVCache:
        view = object.__new__(StaticKVCache)
        view.kv, view.positions = kv, positions
        view.symbolic_length = self.symbolic_length
        return view

    def symbolic(self) -> StaticKVCache:
        """This cache (a view), whose length compiled functions take as a symbol: the layer
        buffers and masks it hands out are marked dynamic in their length dimension, so one
        compile serves every window (`EngineConfig.dynamic_windows`)."""
        view = self._view(self.kv, self.positions)
        view.symbolic_length = True
        return view

    def mark_length(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """`t`, its dimension `dim` (this cache's length) marked dynamic if the cache is
        `symbolic`."""
        if self.symbolic_length:
            torch._dynamo.mark_dynamic(t, dim)
        return t

    def window(self, length: int) -> StaticKVCache:
        """The first `length` positions as a cache of their own (views, no copy).

        Attention reads every position of the buffer it is given, masked or not, so a
        short utterance runs on a short window: one captured graph per window length.
        """
        if not 1 <= length <= self.max_len:
            raise ValueError(f"window length must be in [1, {self.max_len}], got {length}")
        return self._view(self.kv[..., :length, :], self.positions[:length])

    def rows(self, count: int) -> StaticKVCache:
        """The first `count` slots (views): a batch bucket runs on these rows only."""
        if not 1 <= count <= self.batch:
            raise ValueError(f"row count must be in [1, {self.batch}], got {count}")
        return self._view(self.kv[:, :, :count], self.positions)

    @property
    def max_len(self) -> int:
        return int(self.kv.shape[-2])

    @property
    def batch(self) -> int:
        return int(self.kv.shape[2])

    @property
    def bytes_per_slot(self) -> int:
        """Bytes of keys and values one slot holds over the whole length."""
        return self.kv[:, :, 0].numel() * self.kv.element_size()

    def layer(self, i: int) -> torch.Tensor:
        """Layer i's (2, B, H_kv, S, D) buffer: keys at [0], values at [1]."""
        return self.mark_length(self.kv[i], 3)

    def causal_mask(self, pos: torch.Tensor) -> torch.Tensor:
        """(P, 1, T, S) boolean mask from (P, T) positions: the query at pos[p, t] sees keys
        at positions <= pos[p, t] (P is 1 when every row shares the positions)."""
        return (self.positions[None, None, :] <= pos[:, :, None])[:, None]
