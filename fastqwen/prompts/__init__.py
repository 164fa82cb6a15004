"""What the talker is asked: voice requests, the prompt tensors `qwen_tts` builds for them,
and reference audio for voice cloning."""

from fastqwen.prompts.builder import TalkerPrompt, VoiceRequest, build_talker_prompt

__all__ = ["TalkerPrompt", "VoiceRequest", "build_talker_prompt"]
