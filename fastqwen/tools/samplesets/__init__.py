"""Parity sample sets: settings, the run that writes WAVs and summary, and their README."""

from fastqwen.tools.quiet import quiet_known_noise

# Before anything here imports qwen_tts (and with it `sox`), whose import-time messages
# would flood the terminal of `make report`; see `fastqwen.tools.quiet`.
quiet_known_noise()
