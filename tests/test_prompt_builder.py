"""Prompt building keeps the token ids of the texts that come with a voice.

A cached voice's reference transcript (ICL) or instruction is tokenized once; the text to
speak every time; and the prompt is the same tensors as with every text tokenized anew.
"""

from __future__ import annotations

import numpy as np
import torch

from fastqwen.prompts import builder
from fastqwen.prompts.builder import VoiceRequest, build_talker_prompt

REF_TEXT = "The reference recording says exactly this."


def _counting(monkeypatch, tts) -> list[str]:
    seen: list[str] = []
    real = type(tts)._tokenize_texts

    def counted(self, texts):
        seen.extend(texts)
        return real(self, texts)

    monkeypatch.setattr(type(tts), "_tokenize_texts", counted)
    return seen


def test_a_reference_transcript_is_tokenized_once_and_the_text_each_time(tiny_model, monkeypatch):
    tts = tiny_model("base").tts
    wav = (0.1 * np.random.default_rng(1).standard_normal(24_000 * 2)).astype(np.float32)
    items = tts.create_voice_clone_prompt(ref_audio=(wav, 24_000), ref_text=REF_TEXT)
    builder._CONDITIONING_IDS.pop(tts, None)
    seen = _counting(monkeypatch, tts)
    texts = ["First thing to say.", "Second thing to say.", "First thing to say."]
    prompts = [
        build_talker_prompt(
            tts, VoiceRequest("voice_clone", t, "english", voice_clone_prompt=items)
        )
        for t in texts
    ]
    transcripts = [s for s in seen if REF_TEXT in s]
    spoken = [s for s in seen if REF_TEXT not in s]
    assert len(transcripts) == 1
    assert len(spoken) == 3 and all(any(t in s for s in spoken) for t in texts)
    assert prompts[0].prompt_len == prompts[2].prompt_len
    assert torch.equal(prompts[0].inputs_embeds, prompts[2].inputs_embeds)
    # Built with nothing kept, the prompt is the same.
    builder._CONDITIONING_IDS.pop(tts, None)
    again = build_talker_prompt(
        tts, VoiceRequest("voice_clone", texts[1], "english", voice_clone_prompt=items)
    )
    assert torch.equal(again.inputs_embeds, prompts[1].inputs_embeds)
    assert torch.equal(again.trailing_text, prompts[1].trailing_text)


def test_an_instruction_is_kept_and_the_kept_texts_are_bounded(tiny_model, monkeypatch):
    tts = tiny_model("custom_voice").tts
    builder._CONDITIONING_IDS.pop(tts, None)
    monkeypatch.setattr(builder, "CONDITIONING_TEXTS_KEPT", 2)
    seen = _counting(monkeypatch, tts)

    def build(instruct: str):
        request = VoiceRequest("custom_voice", "Say it.", "english", speaker="ryan")
        request.instruct = instruct
        return build_talker_prompt(tts, request)

    for instruct in ["Calm.", "Calm.", "Angry.", "Sad.", "Calm."]:
        build(instruct)
    instructions = [s for s in seen if "Say it." not in s]
    # Calm, (Calm kept), Angry, Sad (Calm now the oldest of three: dropped), Calm again
    assert [next(w for w in ("Calm", "Angry", "Sad") if w in s) for s in instructions] == [
        "Calm",
        "Angry",
        "Sad",
        "Calm",
    ]
    assert len(builder._CONDITIONING_IDS[tts]) == 2
