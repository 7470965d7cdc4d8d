"""The reply cache: bounded in entries, bytes and age; in-progress marks."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from sockproto.core.datagram_cache import IN_PROGRESS, ReplyCache

PEER = ("127.0.0.1", 5000)


class ReplyCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def cache(self, **kw: float) -> ReplyCache:
        return ReplyCache(self.clock, **kw)  # type: ignore[arg-type]

    def test_store_and_lookup(self) -> None:
        cache = self.cache()
        self.assertIsNone(cache.lookup((PEER, 1)))
        cache.store((PEER, 1), b"one")
        self.assertEqual(cache.lookup((PEER, 1)), b"one")
        self.assertIsNone(cache.lookup((PEER, 2)))
        self.assertIsNone(cache.lookup((("127.0.0.1", 5001), 1)))  # another peer, same id
        self.assertEqual((len(cache), cache.size), (1, 3))

    def test_replace(self) -> None:
        cache = self.cache()
        cache.store("k", b"first")
        cache.store("k", b"second!")
        self.assertEqual(cache.lookup("k"), b"second!")
        self.assertEqual((len(cache), cache.size), (1, 7))

    def test_age_bound(self) -> None:
        cache = self.cache(max_age=10)
        cache.store("old", b"a")
        self.clock.advance(6)
        cache.store("new", b"b")
        self.clock.advance(4)
        self.assertEqual(cache.lookup("old"), b"a")  # exactly max_age: still served
        self.clock.advance(0.5)
        self.assertIsNone(cache.lookup("old"))
        self.assertEqual(cache.lookup("new"), b"b")
        self.assertEqual(len(cache), 1)

    def test_expired_entries_are_evicted_by_later_stores(self) -> None:
        cache = self.cache(max_age=1)
        for i in range(100):
            cache.store(i, b"x" * 10)
        self.clock.advance(2)
        cache.store("fresh", b"y")
        self.assertEqual((len(cache), cache.size), (1, 1))

    def test_entry_bound_evicts_the_oldest(self) -> None:
        cache = self.cache(max_entries=3)
        for i in range(5):
            cache.store(i, bytes([i]))
            self.clock.advance(1)
        self.assertEqual(len(cache), 3)
        self.assertEqual([cache.lookup(i) for i in range(5)], [None, None, b"\2", b"\3", b"\4"])

    def test_byte_bound_evicts_the_oldest(self) -> None:
        cache = self.cache(max_bytes=10)
        cache.store("a", b"x" * 4)
        cache.store("b", b"x" * 4)
        cache.store("c", b"x" * 4)
        self.assertEqual(cache.size, 8)
        self.assertIsNone(cache.lookup("a"))
        self.assertEqual(cache.lookup("c"), b"x" * 4)

    def test_reply_over_the_byte_bound_is_not_kept(self) -> None:
        cache = self.cache(max_bytes=10)
        cache.store("a", b"x" * 5)
        cache.store("big", b"x" * 11)
        self.assertIsNone(cache.lookup("big"))
        self.assertEqual(cache.lookup("a"), b"x" * 5)

    def test_disabled(self) -> None:
        cache = self.cache(max_entries=0)
        cache.store("a", b"x")
        self.assertIsNone(cache.lookup("a"))
        self.assertEqual(len(cache), 0)

    def test_memory_stays_bounded(self) -> None:
        cache = self.cache(max_entries=100, max_bytes=1000)
        for i in range(10_000):
            cache.store((PEER, i), b"z" * (i % 50))
            self.assertLessEqual(len(cache), 100)
            self.assertLessEqual(cache.size, 1000)

    def test_in_progress(self) -> None:
        cache = self.cache()
        cache.begin("k")
        self.assertIs(cache.lookup("k"), IN_PROGRESS)
        self.assertEqual(cache.running, 1)
        cache.finish("k", b"answer")
        self.assertEqual(cache.lookup("k"), b"answer")
        self.assertEqual(cache.running, 0)

    def test_in_progress_never_expires(self) -> None:
        cache = self.cache(max_age=1, max_entries=1)
        cache.begin("slow")
        self.clock.advance(100)
        for i in range(10):
            cache.store(i, b"x")
        self.assertIs(cache.lookup("slow"), IN_PROGRESS)

    def test_finish_without_reply(self) -> None:
        cache = self.cache()
        cache.begin("k")
        cache.finish("k", None)
        self.assertIsNone(cache.lookup("k"))

    def test_clear(self) -> None:
        cache = self.cache()
        cache.store("a", b"x")
        cache.begin("b")
        cache.clear()
        self.assertEqual((len(cache), cache.size, cache.running), (0, 0, 0))
        self.assertIsNone(cache.lookup("b"))

    def test_bad_bounds(self) -> None:
        for kw in ({"max_entries": -1}, {"max_bytes": -1}, {"max_age": -1}):
            self.assertRaises(ValueError, self.cache, **kw)

    def test_repr_of_marker(self) -> None:
        self.assertEqual(repr(IN_PROGRESS), "IN_PROGRESS")
