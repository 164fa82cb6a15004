"""The one device helper the engine, the reference runner and the benchmark share."""

from __future__ import annotations

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so wall times are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synchronize_stream(device: torch.device) -> None:
    """Wait for the calling thread's current stream only (a no-op on the CPU).

    The frame loop uses this, not `synchronize`: a device-wide sync would also wait for the
    codec thread's queued decodes on its own stream, and every prefill would then stall the
    frame loop behind up to a whole codec batch."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`values` as a tensor on `device`, copied without waiting for the stream's queued work.

    `torch.tensor(values, device="cuda")` copies from pageable memory, which makes the host
    wait for everything queued on the current stream; on the frame loop's stream that is
    the frames (and the codec's decodes) queued so far. From pinned memory the copy is
    queued like a kernel; the caching host allocator keeps the pinned block until it ran.
    """
    host = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host
