"""The reference encoder's padded (graphable) run and the speaker embedding: qwen-tts' own
results."""

import numpy as np
import pytest
import torch

from fastqwen.prompts.reference_codes import BUCKET_SAMPLES, ReferenceCodes, bucket_samples


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return tiny_model("base").tts.model.speech_tokenizer


# whole frames, a partial last frame (1, 959, 961 samples into it), a whole bucket, one past
LENGTHS = [24_000, 1920 * 50, 1920 * 50 + 1, 1920 * 50 + 961, 24_000 * 7 + 1919, 48_000, 48_001]


@pytest.mark.parametrize("n", LENGTHS)
def test_padded_codes_equal_qwen_tts_encode(tokenizer, n):
    wav = (0.3 * np.random.default_rng(n).standard_normal(n)).astype(np.float32)
    expected = tokenizer.encode([wav], sr=24_000).audio_codes[0]
    codes = ReferenceCodes(tokenizer, mode="padded")
    try:
        got = codes.encode(wav)
    finally:
        codes.close()
    assert got.shape == expected.shape == (-(-n // 1920), 16)
    assert torch.equal(got, expected)


def test_without_the_masks_the_last_frame_differs(tokenizer):
    """What the masks are for: padded with zero samples alone, the last partial frame's
    codes change (each conv pads with zeros in its own space, the downsample repeats its
    last latent), so the test above could not pass without them."""
    n = 1920 * 50 + 961
    wav = (0.3 * np.random.default_rng(n).standard_normal(n)).astype(np.float32)
    expected = tokenizer.encode([wav], sr=24_000).audio_codes[0]
    codes = ReferenceCodes(tokenizer, mode="padded")
    try:
        for hook in codes._hooks:
            hook.remove()
        got = codes.encode(wav)
    finally:
        codes.close()
    assert torch.equal(got[:-1], expected[:-1])
    assert not torch.equal(got[-1], expected[-1])


def test_the_hooks_leave_other_calls_alone_and_close_removes_them(tokenizer):
    wav = (0.3 * np.random.default_rng(5).standard_normal(30_001)).astype(np.float32)
    before = tokenizer.encode([wav], sr=24_000).audio_codes[0]
    codes = ReferenceCodes(tokenizer, mode="padded")
    assert torch.equal(tokenizer.encode([wav], sr=24_000).audio_codes[0], before)
    encoder = tokenizer.model.encoder
    hooked = sum(len(m._forward_pre_hooks) for m in encoder.modules())
    codes.close()
    assert sum(len(m._forward_pre_hooks) for m in encoder.modules()) == hooked - len(codes._convs)


def test_buckets_and_mode_errors(tokenizer):
    assert bucket_samples(1) == bucket_samples(BUCKET_SAMPLES) == BUCKET_SAMPLES
    assert bucket_samples(BUCKET_SAMPLES + 1) == 2 * BUCKET_SAMPLES
    with pytest.raises(ValueError, match="needs a CUDA tokenizer"):
        ReferenceCodes(tokenizer, mode="graphed")
    with pytest.raises(ValueError, match="mode must be"):
        ReferenceCodes(tokenizer, mode="fast")
    codes = ReferenceCodes(tokenizer)
    try:
        assert codes.mode == "exact"  # the CPU default: qwen-tts' own encode
        with pytest.raises(ValueError, match="empty"):
            codes.encode(np.zeros(0, np.float32))
    finally:
        codes.close()


@pytest.mark.parametrize("n", [24_000, 24_000 * 3 + 77])
def test_speaker_embedding_is_qwen_tts_own(tiny_model, n):
    from fastqwen.prompts.speaker import speaker_embedding

    model = tiny_model("base").tts.model
    wav = (0.3 * np.random.default_rng(n).standard_normal(n)).astype(np.float32)
    expected = model.extract_speaker_embedding(wav, 24_000)
    got = speaker_embedding(model, wav)
    assert got.shape == expected.shape and torch.equal(got, expected)


def test_conv_sizes_follow_mimi(tokenizer):
    """The host-side lengths and paddings that stand in for Mimi's device-tensor ones."""
    from fastqwen.prompts.reference_codes import _ConvSizes

    codes = ReferenceCodes(tokenizer, mode="padded")
    try:
        for conv in codes._convs:
            sizes = _ConvSizes.of(conv)
            for n in (1, 7, 959, 960, 961, 24_000, 48_001):
                x = torch.zeros(1, conv.in_channels, n)
                assert sizes.output_length(n) == int(conv._get_output_length(torch.tensor(n)))
                assert sizes.extra_padding(n) == int(conv._get_extra_padding_for_conv1d(x))
    finally:
        codes.close()


def test_another_threads_encode_during_a_run_is_not_masked(tokenizer):
    """The masks belong to the run's thread: qwen-tts' encode called from another thread
    in the middle of a padded run still gives its own codes."""
    import threading

    other = (0.3 * np.random.default_rng(11).standard_normal(90_001)).astype(np.float32)
    expected = tokenizer.encode([other], sr=24_000).audio_codes[0]
    codes = ReferenceCodes(tokenizer, mode="padded")
    seen = {}

    def midway(module, args):
        if codes._lengths is not None and "codes" not in seen:
            seen["codes"] = None
            worker = threading.Thread(
                target=lambda: seen.update(codes=tokenizer.encode([other], sr=24_000))
            )
            worker.start()
            worker.join()

    hook = codes._convs[3].register_forward_pre_hook(midway)
    try:
        wav = (0.3 * np.random.default_rng(12).standard_normal(30_001)).astype(np.float32)
        codes.encode(wav)
    finally:
        hook.remove()
        codes.close()
    assert torch.equal(seen["codes"].audio_codes[0], expected)
