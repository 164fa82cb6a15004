"""The batched codec: many streams' spans in one decoder call give each stream the audio
it gets alone, and the engine's codec thread batches concurrent callers."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from fastqwen.codec.batch import CodecWorker, Span, decode_spans
from fastqwen.codec.decoder import (
    StreamingDecoder,
    codec_decoder,
    decode_utterance,
    receptive_field,
    utterance_audio,
)
from fastqwen.constants import SAMPLES_PER_FRAME
from tests import test_codec
from tests.test_codec import TOLERANCE, _codes, _stream

# test_codec's fixtures, used here too: one CPU thread, and the tiny codec
_one_thread = test_codec._one_thread
codec = test_codec.codec


def _spans(seed: int) -> list[Span]:
    """Spans of different widths, contexts and conv contexts (the first has none)."""
    shapes = [(5, 0, 0), (30, 18, 10), (12, 4, 4), (47, 40, 10), (3, 1, 1)]
    return [
        Span(_codes(width, seed + i), context, conv)
        for i, (width, context, conv) in enumerate(shapes)
    ]


def test_batched_spans_equal_each_span_alone(codec):
    decoder = codec_decoder(codec)
    spans = _spans(seed=3)
    together = decode_spans(decoder, spans)
    for span, audio in zip(spans, together, strict=True):
        (alone,) = decode_spans(decoder, [span])
        assert audio.shape == (span.frames * SAMPLES_PER_FRAME,)
        np.testing.assert_allclose(audio, alone, atol=TOLERANCE, rtol=0)
        assert np.abs(audio).max() > 1e-3  # not silence: a dropped row would pass otherwise


def test_a_batch_is_not_independent_of_a_wrong_alignment(codec):
    """The check above can fail: shifting a span's codes by one frame changes its audio."""
    decoder = codec_decoder(codec)
    span = _spans(seed=3)[1]
    shifted = Span(torch.roll(span.codes, 1, dims=0), span.context, span.conv_context)
    a, b = decode_spans(decoder, [span, shifted])
    assert np.abs(a - b).max() > 10 * TOLERANCE


@pytest.mark.parametrize("ref_frames", [None, 7, 13])
def test_utterance_audio_is_the_reference_decode(codec, ref_frames):
    decoder = codec_decoder(codec)
    codes = _codes(40, seed=5)
    ref = None if ref_frames is None else _codes(ref_frames, seed=6)
    conv = receptive_field(decoder).conv_frames
    ours = utterance_audio(codes, ref, conv, lambda spans: decode_spans(decoder, spans))
    theirs, _ = decode_utterance(codec, codes, ref)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=TOLERANCE, rtol=0)


def test_worker_batches_concurrent_streams(codec):
    decoder = codec_decoder(codec)
    worker = CodecWorker(decoder)
    streams = [_codes(30, seed=20 + i) for i in range(6)]
    out: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    gate = threading.Barrier(len(streams))

    def read(i: int) -> None:
        try:
            gate.wait()
            dec = StreamingDecoder(codec, chunk_frames=6, decode=worker.decode)
            out[i] = np.concatenate(_stream(dec, streams[i], push_frames=6))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(streams))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    worker.close()
    assert not errors, errors
    for i, codes in enumerate(streams):
        alone = np.concatenate(_stream(StreamingDecoder(codec), codes, push_frames=6))
        np.testing.assert_allclose(out[i], alone, atol=TOLERANCE, rtol=0)
    assert worker.spans >= len(streams) * 5
    assert worker.batches < worker.spans  # some calls served several streams
    assert worker.peak_batch > 1


def test_worker_reports_a_failure_to_its_caller_and_goes_on(codec):
    worker = CodecWorker(codec_decoder(codec))
    bad = Span(torch.full((4, 16), 10**6), 0, 0)  # outside the codebook: the embedding fails
    with pytest.raises(IndexError):
        worker.decode([bad])
    (audio,) = worker.decode([Span(_codes(4, seed=1), 0, 0)])
    assert audio.shape == (4 * SAMPLES_PER_FRAME,)
    worker.close()
    (again,) = worker.decode([Span(_codes(4, seed=1), 0, 0)])  # restarts after close
    np.testing.assert_array_equal(again, audio)
    worker.close()


def test_a_worker_with_max_spans_one_decodes_each_span_alone(codec):
    decoder = codec_decoder(codec)
    worker = CodecWorker(decoder, max_spans=1)
    spans = _spans(seed=8)
    audio = worker.decode(spans)  # one caller, five spans: five decoder calls
    worker.close()
    assert worker.batches == len(spans) and worker.peak_batch == 1
    for span, a in zip(spans, audio, strict=True):
        (alone,) = decode_spans(decoder, [span])
        np.testing.assert_array_equal(a, alone)


def test_a_worker_names_an_unknown_stream_and_decodes_on_the_host_off_cuda(codec):
    with pytest.raises(ValueError, match="stream must be 'shared' or 'separate', got 'own'"):
        CodecWorker(codec_decoder(codec), stream="own")
    worker = CodecWorker(codec_decoder(codec), stream="separate")
    try:
        (audio,) = worker.decode([Span(_codes(2, seed=3), 0, 0)])
    finally:
        worker.close()
    assert audio.shape == (2 * SAMPLES_PER_FRAME,) and worker.side_batches == 0


def test_graph_buckets_round_up_and_stop_at_the_top():
    from fastqwen.codec import graphs

    assert graphs.bucket(1, graphs.ROW_BUCKETS) == 1
    assert graphs.bucket(13, graphs.ROW_BUCKETS) == 16
    assert graphs.bucket(22, graphs.CONV_BUCKETS) == 24
    assert graphs.bucket(106, graphs.CONV_BUCKETS) == 112
    assert graphs.bucket(113, graphs.CONV_BUCKETS) is None
    assert graphs.bucket(325, graphs.WINDOW_BUCKETS) == 336


def test_graph_groups_split_by_conv_bucket_and_memory():
    from fastqwen.codec import graphs

    # 70 streaming chunks (22 conv frames), 3 first chunks (2), one span too wide to graph
    windows = [120] * 70 + [2, 2, 2] + [400]
    convs = [22] * 70 + [2, 2, 2] + [22]
    groups, eager = graphs.plan_groups(windows, convs, max_frames=4096)
    assert eager == [73]
    first_chunks = [g for g in groups if g.conv == 2]
    assert [(g.members, g.rows, g.window) for g in first_chunks] == [((70, 71, 72), 4, 16)]
    chunks = [g for g in groups if g.conv == 24]
    assert [len(g.members) for g in chunks] == [64, 6]
    assert [(g.rows, g.window) for g in chunks] == [(64, 128), (8, 128)]
    members = sorted(i for g in groups for i in g.members)
    assert members == list(range(73))  # every graphable span exactly once
    # result() chunks of 106 conv frames: at most 32 rows (32 * 112 <= 4096 < 48 * 112)
    groups, eager = graphs.plan_groups([168] * 40, [106] * 40, max_frames=4096)
    assert not eager and [(len(g.members), g.rows) for g in groups] == [(32, 32), (8, 8)]


def test_graphs_off_decodes_everything_eagerly(monkeypatch):
    from fastqwen.codec import graphs

    monkeypatch.setattr(graphs, "GRAPH_MAX_WINDOW", 0)
    groups, eager = graphs.plan_groups([2, 50], [2, 22], max_frames=4096)
    assert groups == [] and eager == [0, 1]


def test_the_warmed_graph_shapes_cover_what_batches_of_streams_replay(codec):
    """Streams of many lengths (some primed with an ICL reference's codes) push a frame at a
    time; each round's chunks are one batch, grouped as the graphed decode groups them.
    Every group shape of a first chunk or of a later chunk's conv bucket is among the
    shapes the warm-up captures, so serving never stops for those; a warm span gives the
    shape it is made for."""
    from fastqwen.codec import graphs
    from fastqwen.codec.batch import warm_span

    conv_context = receptive_field(codec).conv_frames
    warmed = set(graphs.streamed_shapes(64, 2, 12, conv_context))
    assert len(warmed) <= graphs.MAX_GRAPHS
    for rows, window, conv in warmed:
        groups, eager = graphs.plan_groups(
            [window] * rows, [warm_span(window, conv, conv_context).conv_frames] * rows, 4096
        )
        assert not eager and [(g.rows, g.window, g.conv) for g in groups] == [(rows, window, conv)]

    rng = np.random.default_rng(3)
    emitted: list[Span] = []

    def record(spans):
        emitted.extend(spans)
        return [np.zeros(s.frames * SAMPLES_PER_FRAME, np.float32) for s in spans]

    streams = []
    for i in range(48):
        s = StreamingDecoder(codec, decode=record)
        if i % 4 == 0:  # ICL: the reference's codes first
            s.prime(torch.zeros((int(rng.integers(40, 200)), 16), dtype=torch.long))
        streams.append((s, int(rng.integers(3, 420)), int(rng.integers(0, 60))))
    shapes, spans_seen = [], 0
    for step in range(520):
        emitted.clear()
        for s, length, start in streams:
            if start <= step < start + length:
                s.push(torch.zeros((1, 16), dtype=torch.long))
                if step == start + length - 1:
                    s.flush()
        spans_seen += len(emitted)
        groups, _ = graphs.plan_groups(
            [sp.codes.shape[0] for sp in emitted], [sp.conv_frames for sp in emitted], 4096
        )
        shapes += [(g.rows, g.window, g.conv) for g in groups]
    warmed_convs = {c for _, _, c in warmed}
    common = [k for k in shapes if k[2] in warmed_convs]
    assert spans_seen > 800 and len(common) > 0.9 * len(shapes), (len(common), len(shapes))
    missing = sorted(set(common) - warmed)
    assert not missing, missing
