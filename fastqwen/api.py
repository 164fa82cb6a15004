"""`FastQwen3TTS`: the static-cache engine behind the `qwen_tts.Qwen3TTSModel` API.

Switching is one import: the `generate_*` methods take the same arguments and return
`(wavs, sample_rate)`. `generate(request, ...)` returns the richer `GenerationResult`
(codes, EOS, prefill and per-frame times), and `stream(...)` yields audio chunks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import numpy as np
import torch

from fastqwen.codec.decoder import StreamingDecoder, decode_utterance
from fastqwen.config import EngineConfig, SamplingParams
from fastqwen.engine.loop import LoopStats
from fastqwen.engine.model import StaticModel
from fastqwen.engine.runner import FrameRunner
from fastqwen.prompts.builder import TalkerPrompt, VoiceRequest, build_talker_prompt
from fastqwen.prompts.reference_audio import load_reference_audio
from fastqwen.results import AudioChunk, GenerationResult

log = logging.getLogger(__name__)


class FastQwen3TTS:
    """Static-cache Qwen3-TTS on the weights of a loaded `qwen_tts.Qwen3TTSModel`."""

    def __init__(self, tts, config: EngineConfig | None = None, source=None):
        self.tts = tts
        self.config = config or EngineConfig()
        self.source = source
        model = StaticModel.from_qwen_tts(tts.model, self.config.max_seq_len)
        self.runner = FrameRunner(model, self.config)  # state, graphs: how frames run
        self.last_results: list[GenerationResult] = []

    @classmethod
    def from_pretrained(
        cls,
        model: str,
        device: str = "cpu",
        dtype: str | torch.dtype | None = None,
        config: EngineConfig | None = None,
    ) -> FastQwen3TTS:
        """Load a model string (HF id, directory, `random:<size>-<kind>`, `auto:<HF id>`).

        dtype defaults to float32 on CPU and bfloat16 on CUDA.
        """
        from fastqwen.models.sources import load_model

        if dtype is None:
            dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
        loaded = load_model(model, device=device, dtype=dtype)
        return cls(loaded.tts, config=config, source=loaded.source)

    # ---- properties mirroring the reference -------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.runner.device

    @property
    def model_kind(self) -> str:
        return self.tts.model.tts_model_type

    def get_supported_speakers(self) -> list[str] | None:
        return self.tts.get_supported_speakers()

    def get_supported_languages(self) -> list[str] | None:
        return self.tts.get_supported_languages()

    # ---- the rich API --------------------------------------------------------------
    def _frames(
        self,
        prompt: TalkerPrompt,
        params: SamplingParams,
        seed: int | None,
        stats: LoopStats,
        first_block: int | None = None,
    ) -> Iterator[torch.Tensor]:
        return self.runner.frames(prompt, params, seed, stats, first_block)

    @torch.inference_mode()
    def generate(
        self, request: VoiceRequest, params: SamplingParams | None = None, seed: int | None = None
    ) -> GenerationResult:
        """One utterance; the same request, params and seed as the reference give the same codes."""
        params = params or SamplingParams()
        prompt = build_talker_prompt(self.tts, request)
        stats = LoopStats()
        t0 = time.perf_counter()
        blocks = list(self._frames(prompt, params, seed, stats))
        t1 = time.perf_counter()
        codes = torch.cat(blocks) if blocks else torch.zeros((0, 16), dtype=torch.long)
        audio, sr = decode_utterance(
            self.tts.model.speech_tokenizer, codes.to(self.device), prompt.ref_codes
        )
        t2 = time.perf_counter()
        return GenerationResult(
            audio=audio,
            sample_rate=sr,
            codes=codes,
            eos_reached=stats.eos_reached,
            engine="static",
            wall_s=t2 - t0,
            generate_s=t1 - t0,
            prefill_s=stats.prefill_s,
            frame_times_s=_per_frame_times(stats),
        )

    @torch.inference_mode()
    def stream(
        self,
        request: VoiceRequest,
        params: SamplingParams | None = None,
        seed: int | None = None,
        *,
        first_chunk_frames: int = 2,
        chunk_frames: int = 12,
    ) -> Iterator[AudioChunk]:
        """Yield audio as it is generated: a small first chunk, then `chunk_frames` at a time.

        The codec decodes each chunk with left context, so the concatenated chunks equal
        the non-streamed audio (up to float rounding).
        """
        params = params or SamplingParams()
        prompt = build_talker_prompt(self.tts, request)
        decoder = StreamingDecoder(
            self.tts.model.speech_tokenizer,
            first_chunk_frames=first_chunk_frames,
            chunk_frames=chunk_frames,
        )
        if prompt.ref_codes is not None:
            # ICL: the reference codes are decoding context only. The reference cuts its
            # waveform at int(ref / total * samples), which can fall one sample early;
            # streaming cuts exactly at the frame boundary.
            decoder.prime(prompt.ref_codes.to(self.device))
        sr = int(self.tts.model.speech_tokenizer.get_output_sample_rate())
        stats = LoopStats()
        blocks: list[torch.Tensor] = []
        pieces: list[np.ndarray] = []
        first_audio_s: float | None = None
        t0 = time.perf_counter()
        for block in self._frames(prompt, params, seed, stats, first_block=first_chunk_frames):
            blocks.append(block)
            audio = decoder.push(block.to(self.device))
            if audio is not None and len(audio):
                elapsed = time.perf_counter() - t0
                first_audio_s = elapsed if first_audio_s is None else first_audio_s
                pieces.append(audio)
                yield AudioChunk(audio=audio, sample_rate=sr, elapsed_s=elapsed)
        generate_s = time.perf_counter() - t0
        tail = decoder.flush()
        if tail is not None and len(tail):
            elapsed = time.perf_counter() - t0
            first_audio_s = elapsed if first_audio_s is None else first_audio_s
            pieces.append(tail)
            yield AudioChunk(audio=tail, sample_rate=sr, elapsed_s=elapsed)
        # The whole stream as one result, like generate() gives, plus its time to first audio.
        codes = torch.cat(blocks) if blocks else torch.zeros((0, 16), dtype=torch.long)
        self.last_results = [
            GenerationResult(
                audio=np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32),
                sample_rate=sr,
                codes=codes,
                eos_reached=stats.eos_reached,
                engine="static",
                wall_s=time.perf_counter() - t0,
                generate_s=generate_s,
                prefill_s=stats.prefill_s,
                time_to_first_audio_s=first_audio_s,
                frame_times_s=_per_frame_times(stats),
            )
        ]

    # ---- qwen_tts-compatible API -----------------------------------------------------
    def create_voice_clone_prompt(
        self, ref_audio, ref_text: str | None = None, x_vector_only_mode: bool = False
    ) -> list:
        """Reusable voice-clone prompt; the reference audio is checked, mixed to mono, resampled."""
        if self.model_kind != "base":
            raise ValueError(
                f"voice cloning needs a 'base' model, but this model is {self.model_kind!r}; "
                "load a *-Base checkpoint (or random:<size>-base)"
            )
        if not x_vector_only_mode and not (ref_text or "").strip():
            raise ValueError(
                "ref_text is required for ICL voice cloning; "
                "pass ref_text or x_vector_only_mode=True"
            )
        wav, sr = load_reference_audio(ref_audio)
        return self.tts.create_voice_clone_prompt(
            ref_audio=(wav, sr), ref_text=ref_text, x_vector_only_mode=x_vector_only_mode
        )

    def _clone_items(self, voice_clone_prompt, ref_audio, ref_text, x_vector_only_mode) -> list:
        if voice_clone_prompt is not None:
            return voice_clone_prompt
        if ref_audio is None:
            raise ValueError("pass ref_audio (with ref_text for ICL) or a voice_clone_prompt")
        return self.create_voice_clone_prompt(ref_audio, ref_text, x_vector_only_mode)

    def _run_many(self, texts, make_request, gen: dict, seed: int | None):
        """Loop over one text or a list, as the reference's batch API accepts both."""
        params = SamplingParams.from_kwargs(**gen)
        texts = texts if isinstance(texts, list) else [texts]
        self.last_results = [self.generate(make_request(t), params, seed) for t in texts]
        return [r.audio for r in self.last_results], self.last_results[0].sample_rate

    def generate_custom_voice(
        self,
        text,
        speaker: str,
        language: str | None = None,
        instruct: str | None = None,
        non_streaming_mode: bool | None = None,
        seed: int | None = None,
        **gen,
    ):
        def request(t: str) -> VoiceRequest:
            return VoiceRequest(
                "custom_voice",
                t,
                language or "auto",
                speaker=speaker,
                instruct=instruct,
                non_streaming_mode=non_streaming_mode,
            )

        return self._run_many(text, request, gen, seed)

    def generate_voice_design(
        self,
        text,
        instruct: str,
        language: str | None = None,
        non_streaming_mode: bool | None = None,
        seed: int | None = None,
        **gen,
    ):
        def request(t: str) -> VoiceRequest:
            return VoiceRequest(
                "voice_design",
                t,
                language or "auto",
                instruct=instruct,
                non_streaming_mode=non_streaming_mode,
            )

        return self._run_many(text, request, gen, seed)

    def generate_voice_clone(
        self,
        text,
        language: str | None = None,
        ref_audio=None,
        ref_text: str | None = None,
        x_vector_only_mode: bool = False,
        voice_clone_prompt: list | None = None,
        non_streaming_mode: bool | None = None,
        seed: int | None = None,
        **gen,
    ):
        items = self._clone_items(voice_clone_prompt, ref_audio, ref_text, x_vector_only_mode)

        def request(t: str) -> VoiceRequest:
            return VoiceRequest(
                "voice_clone",
                t,
                language or "auto",
                voice_clone_prompt=items,
                non_streaming_mode=non_streaming_mode,
            )

        return self._run_many(text, request, gen, seed)

    # ---- streaming, with the generate_* arguments (one text at a time) ------------------
    def stream_custom_voice(
        self,
        text: str,
        speaker: str,
        language: str | None = None,
        instruct: str | None = None,
        non_streaming_mode: bool | None = None,
        seed: int | None = None,
        first_chunk_frames: int = 2,
        chunk_frames: int = 12,
        **gen,
    ) -> Iterator[AudioChunk]:
        request = VoiceRequest(
            "custom_voice",
            text,
            language or "auto",
            speaker=speaker,
            instruct=instruct,
            non_streaming_mode=non_streaming_mode,
        )
        return self.stream(
            request,
            SamplingParams.from_kwargs(**gen),
            seed,
            first_chunk_frames=first_chunk_frames,
            chunk_frames=chunk_frames,
        )

    def stream_voice_design(
        self,
        text: str,
        instruct: str,
        language: str | None = None,
        non_streaming_mode: bool | None = None,
        seed: int | None = None,
        first_chunk_frames: int = 2,
        chunk_frames: int = 12,
        **gen,
    ) -> Iterator[AudioChunk]:
        request = VoiceRequest(
            "voice_design",
            text,
            language or "auto",
            instruct=instruct,
            non_streaming_mode=non_streaming_mode,
        )
        return self.stream(
            request,
            SamplingParams.from_kwargs(**gen),
            seed,
            first_chunk_frames=first_chunk_frames,
            chunk_frames=chunk_frames,
        )

    def stream_voice_clone(
        self,
        text: str,
        language: str | None = None,
        ref_audio=None,
        ref_text: str | None = None,
        x_vector_only_mode: bool = False,
        voice_clone_prompt: list | None = None,
        non_streaming_mode: bool | None = None,
        seed: int | None = None,
        first_chunk_frames: int = 2,
        chunk_frames: int = 12,
        **gen,
    ) -> Iterator[AudioChunk]:
        items = self._clone_items(voice_clone_prompt, ref_audio, ref_text, x_vector_only_mode)
        request = VoiceRequest(
            "voice_clone",
            text,
            language or "auto",
            voice_clone_prompt=items,
            non_streaming_mode=non_streaming_mode,
        )
        return self.stream(
            request,
            SamplingParams.from_kwargs(**gen),
            seed,
            first_chunk_frames=first_chunk_frames,
            chunk_frames=chunk_frames,
        )


def _per_frame_times(stats: LoopStats) -> list[float]:
    out: list[float] = []
    for t, n in zip(stats.block_times_s, stats.block_frames, strict=True):
        out.extend([t / n] * n if n else [])
    return out
