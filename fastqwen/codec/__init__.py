"""Codes to audio: the reference codec decode, whole or streamed in exact chunks."""

from fastqwen.codec.decoder import StreamingDecoder, decode_codes, decode_utterance

__all__ = ["StreamingDecoder", "decode_codes", "decode_utterance"]
