"""Model facts of Qwen3-TTS-12Hz, named once.

Values come from the official `qwen-tts` 0.1.1 configs; see ../shared/qwen3-tts-facts.md.
"""

FRAME_RATE_HZ = 12.5
SAMPLE_RATE = 24_000
SAMPLES_PER_FRAME = 1920
NUM_CODEBOOKS = 16
CODEBOOK_SIZE = 2048
# The talker's vocabulary is codebook 0's audio codes followed by control codes (pad, bos,
# eos, think, languages, speakers); the reference suppresses the last NUM_CONTROL_CODES
# ids, all but EOS, while generating.
NUM_CONTROL_CODES = 1024
TALKER_VOCAB_SIZE = CODEBOOK_SIZE + NUM_CONTROL_CODES

# Text-side special ids (Qwen2 BPE vocabulary).
IM_START_ID = 151644
IM_END_ID = 151645
TTS_PAD_ID = 151671
TTS_BOS_ID = 151672
TTS_EOS_ID = 151673

# Codec-side special ids (control codes of the talker vocabulary).
CODEC_PAD_ID = 2148
CODEC_BOS_ID = 2149
CODEC_EOS_ID = 2150
CODEC_THINK_ID = 2154
CODEC_NOTHINK_ID = 2155
CODEC_THINK_BOS_ID = 2156
CODEC_THINK_EOS_ID = 2157

LANGUAGE_IDS = {
    "english": 2050,
    "german": 2053,
    "spanish": 2054,
    "chinese": 2055,
    "japanese": 2058,
    "french": 2061,
    "sichuan_dialect": 2062,
    "korean": 2064,
    "russian": 2069,
    "italian": 2070,
    "portuguese": 2071,
    "beijing_dialect": 2074,
}

SPEAKER_IDS = {
    "aiden": 2861,
    "sohee": 2864,
    "ono_anna": 2873,
    "eric": 2875,
    "dylan": 2878,
    "uncle_fu": 3010,
    "ryan": 3061,
    "vivian": 3065,
    "serena": 3066,
}
SPEAKER_DIALECTS = {"eric": "sichuan_dialect", "dylan": "beijing_dialect"}

MODEL_KINDS = ("custom_voice", "base", "voice_design")
MODEL_SIZES = ("tiny", "0.6b", "1.7b")
