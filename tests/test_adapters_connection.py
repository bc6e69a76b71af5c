"""The client connection's bookkeeping of received frames, driven the way picows drives it (no socket needed).

A socket read's frames are appended in one callback and counted by an end-of-read callback scheduled after it;
the consumer may take the frames before that callback runs. Every frame must then be counted exactly once, or
phantom frames pile up as "pending" until reading pauses for good.
"""

from __future__ import annotations

import asyncio

from hftdb.exchanges.connection import WsConnection


async def test_frames_taken_before_their_read_ends_are_counted_once():
    conn = WsConnection("test", max_pending=10)
    for _ in range(50):
        conn._start_read().extend([b"{}"] * 7)  # one read of 7 frames, as the listener appends them
        chunks = await conn.next_chunks()  # the consumer runs before the end-of-read callback
        assert [len(p) for _, p in chunks] == [7]
        await asyncio.sleep(0)  # now the end-of-read callback runs
    assert conn._pending == 0 and not conn._paused


async def test_reads_waiting_for_the_consumer_share_one_stamp_each():
    conn = WsConnection("test")
    for n in (3, 1, 4):
        conn._start_read().extend([b"{}"] * n)
        await asyncio.sleep(0)
    chunks = await conn.next_chunks()
    assert [len(p) for _, p in chunks] == [3, 1, 4]
    stamps = [ts for ts, _ in chunks]
    assert stamps == sorted(stamps)
    assert conn._pending == 0
