"""Hand-written Triton kernels for the compiled CUDA frame (Triton ships with CUDA torch)."""
