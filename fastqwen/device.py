"""The one device helper the engine, the reference runner and the benchmark share."""

from __future__ import annotations

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so wall times are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
