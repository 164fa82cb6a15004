"""Hand-written Triton kernels for the compiled CUDA frame (Triton ships with CUDA torch)."""

from __future__ import annotations

from torch.library import wrap_triton
from triton.runtime.interpreter import InterpretedFunction


def traceable(kernel):
    """`kernel` as a `triton_op` launches it: wrapped, so `torch.compile` can trace the
    launch. Under Triton's CPU interpreter (TRITON_INTERPRET=1, how the tests run the
    kernels) it is an interpreted function, which cannot be wrapped and is launched as is."""
    return kernel if isinstance(kernel, InterpretedFunction) else wrap_triton(kernel)
