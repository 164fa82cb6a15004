"""fastqwen: a static-cache Qwen3-TTS engine and the tools to prove it speaks like the reference."""

__version__ = "0.1.0"
