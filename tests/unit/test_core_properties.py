"""Hypothesis: any chunking of any byte stream gives the same events."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sockproto.core import INT16, INT32, INT32LE, SPF1, Frame, FrameDecoder, HeaderSpec, Malformed

LEGACY = HeaderSpec(
    "legacy", "magic:2s flags:B length:H", constants={"magic": b"LG"}, length_includes_header=True
)
SPECS = [SPF1, INT32, INT16, INT32LE, LEGACY]


def frames_for(spec: HeaderSpec) -> st.SearchStrategy[list[tuple[dict[str, int], bytes]]]:
    fields: dict[str, st.SearchStrategy[int]] = {}
    if spec.has_kind:
        fields["kind"] = st.integers(1, 6)
    if spec.has_id:
        fields["id"] = st.integers(0, 2**32 - 1)
    if "flags" in spec.names:
        fields["flags"] = st.integers(0, 255)
    return st.lists(st.tuples(st.fixed_dictionaries(fields), st.binary(max_size=300)), max_size=12)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in pairwise(bounds)]


def decode(spec: HeaderSpec, chunks: list[bytes], **kw: object) -> list[tuple[object, ...]]:
    d: FrameDecoder[Frame] = FrameDecoder(spec, **kw)  # type: ignore[arg-type]
    out: list[tuple[object, ...]] = []
    for chunk in chunks:
        if out and out[-1][0] == "malformed":
            break  # the decoder refuses more input once the stream is broken
        for e in d.feed(chunk):
            if isinstance(e, Frame):
                out.append(("frame", e.header, e.payload))
            elif isinstance(e, Malformed):
                out.append(("malformed", e.reason))
            else:
                out.append((type(e).__name__, e.header, e.length))
    return out


class ChunkingTests(SynchronousTestCase):
    @given(st.data())
    def test_any_split_gives_the_encoded_frames(self, data: st.DataObject) -> None:
        spec = data.draw(st.sampled_from(SPECS))
        frames = data.draw(frames_for(spec))
        stream = b"".join(spec.encode(p, **f) for f, p in frames)
        cuts = data.draw(st.lists(st.integers(0, max(len(stream), 1)), max_size=20))
        got = decode(spec, split(stream, cuts))
        self.assertEqual([g[2] for g in got], [p for _, p in frames])
        self.assertEqual(got, decode(spec, [stream]))

    @given(st.data())
    def test_any_split_gives_the_same_events_with_limits(self, data: st.DataObject) -> None:
        spec = data.draw(st.sampled_from(SPECS))
        frames = data.draw(frames_for(spec))
        stream = b"".join(spec.encode(p, **f) for f, p in frames)
        stream += data.draw(st.binary(max_size=40))  # arbitrary trailing bytes
        max_payload = data.draw(st.integers(0, 200))
        kinds = data.draw(st.sampled_from([None, {1, 4}]))
        whole = decode(spec, [stream], max_payload=max_payload, accept_kinds=kinds)
        one_by_one = decode(
            spec, [stream[i : i + 1] for i in range(len(stream))], max_payload=max_payload, accept_kinds=kinds
        )
        cuts = data.draw(st.lists(st.integers(0, max(len(stream), 1)), max_size=20))
        chunked = decode(spec, split(stream, cuts), max_payload=max_payload, accept_kinds=kinds)
        self.assertEqual(whole, one_by_one)
        self.assertEqual(whole, chunked)

    @given(st.binary(max_size=500), st.lists(st.integers(0, 500), max_size=10))
    def test_random_bytes_never_crash_and_stop_at_malformed(self, stream: bytes, cuts: list[int]) -> None:
        got = decode(SPF1, split(stream, cuts), max_payload=64)
        self.assertEqual(got, decode(SPF1, [stream], max_payload=64))
        kinds = [g[0] for g in got]
        if "malformed" in kinds:
            self.assertEqual(kinds.index("malformed"), len(kinds) - 1)


class PayloadModeTests(SynchronousTestCase):
    @given(st.data())
    def test_payload_mode_agrees_with_frames(self, data: st.DataObject) -> None:
        spec = data.draw(st.sampled_from([INT32, INT16, INT32LE]))
        frames = data.draw(frames_for(spec))
        stream = b"".join(spec.encode(p) for _, p in frames) + data.draw(st.binary(max_size=10))
        cuts = data.draw(st.lists(st.integers(0, max(len(stream), 1)), max_size=20))
        max_payload = data.draw(st.integers(0, 200))
        as_frames: FrameDecoder[Frame] = FrameDecoder(spec, max_payload=max_payload)
        as_bytes: FrameDecoder[bytes] = FrameDecoder(spec, max_payload=max_payload, frame_type=bytes)
        got_frames: list[object] = []
        got_bytes: list[object] = []
        for chunk in split(stream, cuts):
            got_frames += [
                e.payload if isinstance(e, Frame) else ("skipped", e.length) for e in as_frames.feed(chunk)
            ]  # type: ignore[union-attr]
            got_bytes += [e if isinstance(e, bytes) else ("skipped", e.length) for e in as_bytes.feed(chunk)]  # type: ignore[union-attr]
        self.assertEqual(got_bytes, got_frames)
