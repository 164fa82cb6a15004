"""Codes to audio: the reference codec decode, whole or streamed in exact chunks, and the
batched decode of many streams' chunks at once."""

from fastqwen.codec.batch import CodecWorker, Span, decode_spans
from fastqwen.codec.decoder import (
    StreamingDecoder,
    codec_decoder,
    decode_codes,
    decode_utterance,
    utterance_audio,
)

__all__ = [
    "CodecWorker",
    "Span",
    "StreamingDecoder",
    "codec_decoder",
    "decode_codes",
    "decode_spans",
    "decode_utterance",
    "utterance_audio",
]
