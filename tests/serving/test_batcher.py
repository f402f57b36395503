"""The batcher alone: oldest-first, one chunk per stream per batch, in order, limits, closed streams."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from rnnstream.pipeline.streaming import StreamSession
from rnnstream.serving.batcher import Batcher, BatchStream, QueueFull
from tests.serving._helpers import RATE, audio_backend, run, session_results, signal


def test_oldest_first_one_chunk_per_stream_in_order_and_equal_to_sessions():
    backend = audio_backend()
    batches: list[list[tuple[BatchStream, int]]] = []
    outputs: dict[int, list] = {}

    def on_results(results):
        batches.append([(s, seq) for s, seq, _, _ in results])
        for s, seq, r, _ in results:
            outputs.setdefault(id(s), []).append((seq, r))

    async def main():
        b = Batcher(max_batch=2, max_wait_s=0.0, max_queue=8, on_results=on_results,
                    on_failure=lambda items, exc: pytest.fail(f"backend failed: {exc}"))
        streams = [BatchStream(StreamSession(backend, sample_rate=RATE)) for _ in range(3)]
        chunks = {i: [signal(10 * i + k, 0.05) for k in range(4)] for i in range(3)}
        now = time.monotonic()
        # submit stream 2 first (oldest), then 0, then 1; each 4 chunks
        for order, i in enumerate((2, 0, 1)):
            for k, c in enumerate(chunks[i]):
                b.submit(streams[i], k, c, now + order * 0.001 + k * 0.01)
        task = asyncio.create_task(b.run())
        while sum(len(x) for x in batches) < 12:
            await asyncio.sleep(0.005)
        b.stop()
        await task
        b.close()
        return streams, chunks

    streams, chunks = run(main())
    assert all(len(batch) <= 2 for batch in batches)
    assert all(len({id(s) for s, _ in batch}) == len(batch) for batch in batches)  # never two of one stream
    assert {id(s) for s, _ in batches[0]} == {id(streams[2]), id(streams[0])}  # the oldest two go first
    for i, s in enumerate(streams):
        got = outputs[id(s)]
        assert [seq for seq, _ in got] == [0, 1, 2, 3]
        for (_, r), ref in zip(got, session_results(backend, chunks[i]), strict=True):
            np.testing.assert_allclose(r.outputs, ref.outputs, atol=1e-6)


def test_queue_limit_raises_queue_full():
    b = Batcher(max_batch=2, max_wait_s=0.0, max_queue=3, on_results=lambda r: None, on_failure=lambda i, e: None)
    s = BatchStream(StreamSession(audio_backend(), sample_rate=RATE))
    for k in range(3):
        b.submit(s, k, signal(k, 0.01), time.monotonic())
    with pytest.raises(QueueFull, match=r"3 chunks are already queued \(limit 3\)"):
        b.submit(s, 3, signal(3, 0.01), time.monotonic())
    assert [seq for seq, _, _ in s.pending] == [0, 1, 2]
    b.close()


def test_stream_closed_between_scheduling_and_start_does_not_stall_the_scheduler():
    backend = audio_backend()
    delivered = []

    async def main():
        b = Batcher(max_batch=4, max_wait_s=0.0, max_queue=4, on_results=lambda r: delivered.extend(r),
                    on_failure=lambda items, exc: pytest.fail(f"backend failed: {exc}"))
        b._wake, b._free = asyncio.Event(), asyncio.Semaphore(1)
        a, c = BatchStream(StreamSession(backend, sample_rate=RATE)), BatchStream(StreamSession(backend, sample_rate=RATE))
        b.submit(a, 0, signal(1, 0.05), time.monotonic())
        await b._free.acquire()
        items = await b._collect()
        b.discard(a)  # e.g. its client failed in between
        await b._run_batch(items)
        assert b._free._value == 1 and not a.in_flight and a.settled.is_set()
        task = asyncio.create_task(b.run())
        b.submit(c, 0, signal(2, 0.05), time.monotonic())
        while len(delivered) < 2:
            await asyncio.sleep(0.005)
        b.stop()
        await asyncio.wait_for(task, 5)
        b.close()

    run(main(), timeout=20)
    assert [seq for _, seq, _, _ in delivered] == [0, 0]


@pytest.mark.parametrize("workers", [0, 1])
def test_small_batches_step_on_the_event_loop_and_large_ones_in_a_worker_thread(workers: int):
    """``inline(chunks)`` picks the event loop's thread for a batch; ``workers=0`` steps every batch there."""
    import threading

    backend = audio_backend()
    where: list[tuple[int, bool]] = []

    def step(sessions, chunks, max_batch, on_split):
        where.append((sum(c.size for c in chunks), threading.current_thread() is threading.main_thread()))
        from rnnstream.pipeline.batching import step_streams_contained

        return step_streams_contained(sessions, chunks, max_batch, on_split)

    delivered = []

    async def main():
        b = Batcher(max_batch=4, max_wait_s=0.0, max_queue=4, workers=workers, step=step,
                    inline=lambda chunks: sum(c.size for c in chunks) <= 1000,
                    on_results=lambda r: delivered.extend(r),
                    on_failure=lambda items, exc: pytest.fail(f"backend failed: {exc}"))
        s = BatchStream(StreamSession(backend, sample_rate=RATE))
        task = asyncio.create_task(b.run())
        for seq, seconds in enumerate((0.05, 0.5)):  # 400 samples (inline), then 4000
            b.submit(s, seq, signal(seq, seconds), time.monotonic())
            while len(delivered) <= seq:
                await asyncio.sleep(0.005)
        b.stop()
        await asyncio.wait_for(task, 5)
        b.close()
        return b

    b = run(main(), timeout=20)
    assert [n for n, _ in where] == [int(0.05 * RATE), int(0.5 * RATE)]
    assert [on_loop for _, on_loop in where] == [True, workers == 0]
    assert b.inline_batches == (2 if workers == 0 else 1)
    assert [seq for _, seq, r, _ in delivered] == [0, 1] and not any(isinstance(r, Exception) for *_, r, _ in delivered)
