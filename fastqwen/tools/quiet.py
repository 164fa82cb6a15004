"""Known, harmless messages of other packages, kept out of the terminal during `make report`.

Each is silenced by what it is, not by level, so anything new still shows:
- the `sox` Python package (imported by qwen-tts) runs `sox -h` at import and, without the
  SoX program, prints "sox: not found" and a SoX warning; qwen-tts never calls SoX here, so
  it is optional;
- qwen-tts's "Warning: flash-attn is not installed" banner, printed when it imports its
  25 Hz tokenizer's Whisper encoder, which the 12 Hz models never run;
- transformers' "Setting `pad_token_id` to `eos_token_id`" on every reference `generate`;
- ipykernel's "Kernel is running over TCP without encryption" when papermill starts a kernel
  on this machine (`KERNEL_ARGUMENTS` sets the kernel's own log level to ERROR).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import shutil
import sys
from collections.abc import Iterator

KERNEL_ARGUMENTS = ("--IPKernelApp.log_level=ERROR",)
FLASH_ATTN_MODULE = "qwen_tts.core.tokenizer_25hz.vq.whisper_encoder"  # prints at import
FLASH_ATTN_BANNER = "Warning: flash-attn is not installed"
KNOWN = {
    "sox": "SoX could not be found",
    "transformers.generation.utils": "Setting `pad_token_id` to `eos_token_id`",
}


class _Drop(logging.Filter):
    """Drops the records of one logger whose message starts with `prefix`."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


@contextlib.contextmanager
def _no_fd2() -> Iterator[None]:
    """Send file descriptor 2 (what a child shell writes to) to /dev/null for a moment."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_known_noise() -> None:
    """Install the filters (once per logger) and import `sox` without its shell's complaint."""
    for name, prefix in KNOWN.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) for f in logger.filters):
            logger.addFilter(_Drop(prefix))
    if "sox" not in sys.modules and shutil.which("sox") is None:
        with _no_fd2(), contextlib.suppress(ImportError):
            import sox  # noqa: F401  (its import-time check is the noise)
    if FLASH_ATTN_MODULE not in sys.modules and importlib.util.find_spec("flash_attn") is None:
        _import_without_banner(FLASH_ATTN_MODULE, FLASH_ATTN_BANNER)


def _import_without_banner(module: str, banner: str) -> None:
    """Import `module`, dropping what it prints at import only if that is the known banner."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.suppress(ImportError):
        importlib.import_module(module)
    if banner not in printed.getvalue():
        sys.stdout.write(printed.getvalue())  # something else: let it show


__all__ = ["KERNEL_ARGUMENTS", "quiet_known_noise"]
