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
