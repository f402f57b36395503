"""Cross-stream batching for the server: Triton's "oldest" sequence batching, in process.

Each stream queues its chunks in order. The scheduler takes the streams whose *oldest* queued chunk is
oldest, at most ``max_batch`` of them and at most one chunk per stream, and advances them together with
:func:`rnnstream.pipeline.batching.step_streams` (featurizing included). A small batch (``inline(chunks)`` true,
e.g. real-time chunks of 100 ms) is stepped on the event loop's own thread: a hand-off to a worker thread and the
two threads' contention for the GIL cost more CPU than the few milliseconds the loop waits. Larger batches (or
all of them without ``inline``) go to a worker thread, so the event loop keeps accepting. A batch starts as soon
as ``max_batch`` streams are ready, or when the oldest ready chunk has waited ``max_wait_s``, or at once when
``max_wait_s`` is 0. A stream with a chunk in flight is not
eligible until that chunk is committed, so one stream's chunks are applied in order and never two in a
batch.

Chunks are validated before :meth:`Batcher.submit` (the server decodes and checks them). Should a batch
still fail, :func:`rnnstream.pipeline.batching.step_streams_contained` bisects it: the culprit stream's result is its
exception, every other stream gets its prediction. ``on_results`` receives one outcome per chunk (a
``ChunkResult`` or an exception); ``on_failure`` only when the scheduling itself broke (a bug).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rnnstream.pipeline.batching import step_streams_contained
from rnnstream.pipeline.streaming import ChunkResult, StreamSession
from rnnstream.serving.metrics import ServerMetrics, observe_many

#: One stream's result of a batched step: its ChunkResult, or the exception for its chunk.
ChunkOutcome = ChunkResult | Exception

log = logging.getLogger("rnnstream.serve")


def _same_torch_threads() -> Callable[[], None]:
    """A worker-thread initializer giving torch's intra-op threads the caller's setting.

    OpenMP keeps the thread count per thread: a new thread gets the default (all cores), whatever the
    main thread set, and on a busy machine its spinning threads made small batches 10-30x slower.
    """
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return lambda: None
    n = torch.get_num_threads()
    return lambda: torch.set_num_threads(n)


class QueueFull(Exception):
    """A stream already holds ``max_queue`` chunks waiting."""


class BatchStream:
    """A stream as the batcher sees it: its session and its queue of ``(seq, chunk, received_at)``."""

    def __init__(self, session: StreamSession):
        self.session = session
        self.pending: deque[tuple[int, Any, float]] = deque()
        self.in_flight = False
        self.in_heap = False
        self.closed = False
        self.settled = asyncio.Event()  # set whenever no chunk of this stream is in flight
        self.settled.set()

    @property
    def busy(self) -> bool:
        return bool(self.pending) or self.in_flight


#: How a batch is stepped: ``(sessions, chunks, max_batch, on_split) -> one ChunkOutcome per session``.
StepFn = Callable[[list[StreamSession], list[Any], int, Callable[[], None] | None], list[ChunkOutcome]]


def _timed_step(step: StepFn, sessions: list[StreamSession], chunks: list[Any], max_batch: int,
                on_split: Callable[[], None] | None) -> tuple[list[ChunkOutcome], float]:
    start = time.thread_time()
    results = step(sessions, chunks, max_batch, on_split)
    return results, time.thread_time() - start


#: One scheduled chunk: ``(stream, seq, chunk, received_at)``.
_Item = tuple["BatchStream", int, Any, float]

#: ``(stream, seq, outcome, received_at)`` for every chunk of a finished batch (a ChunkResult or an exception).
Results = list[tuple[BatchStream, int, ChunkOutcome, float]]


class Batcher:
    """Schedules queued chunks of many streams into ``step_streams`` calls (see module doc).

    ``workers``: threads stepping batches (0: none, every batch on the event loop); ``inline(chunks)``: whether a
    batch is small enough to step on the event loop anyway; ``step``: the stepping function (default
    :func:`step_streams_contained`).
    """

    def __init__(
        self,
        *,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        on_results: Callable[[Results], None],
        on_failure: Callable[[Sequence[tuple[BatchStream, int]], BaseException], None],
        workers: int = 1,
        metrics: ServerMetrics | None = None,
        thread_init: Callable[[], None] | None = None,
        step: StepFn | None = None,
        inline: Callable[[list[Any]], bool] | None = None,
    ):
        if max_batch < 1 or max_queue < 1 or workers < 0 or max_wait_s < 0:
            raise ValueError(f"max_batch and max_queue must be >= 1, workers and max_wait_s >= 0; got {max_batch}, "
                             f"{max_queue}, {workers}, {max_wait_s}")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.workers = workers
        self.metrics = metrics
        self._on_results = on_results
        self._on_failure = on_failure
        self._step: StepFn = step or step_streams_contained  # the server's: through the stream core
        self._inline = inline  # which batches are stepped on the event loop (workers=0: every one)
        self.inline_batches = 0
        self._heap: list[tuple[float, int, BatchStream]] = []
        self._counter = itertools.count()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rnnstream-batch",
                                            initializer=thread_init or _same_torch_threads()) if workers else None
        self._wake: asyncio.Event | None = None
        self._wake_at = 1  # wake the scheduler when this many streams are ready
        self._free: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.batches = 0
        self.worker_cpu_s = 0.0  # CPU seconds spent in step_streams by the worker threads (featurize + backend)

    # -- producer side ---------------------------------------------------------------------------
    def submit(self, stream: BatchStream, seq: int, chunk: Any, received_at: float) -> None:
        """Queue one validated chunk; raises :class:`QueueFull` past ``max_queue`` chunks waiting."""
        if len(stream.pending) >= self.max_queue:
            raise QueueFull(f"{len(stream.pending)} chunks are already queued (limit {self.max_queue})")
        stream.pending.append((seq, chunk, received_at))
        if not stream.in_flight and not stream.in_heap:
            self._ready(stream)

    def discard(self, stream: BatchStream) -> None:
        """Drop a stream's queued chunks and never schedule it again (a chunk in flight still completes)."""
        stream.closed = True
        stream.pending.clear()

    def _ready(self, stream: BatchStream) -> None:
        heapq.heappush(self._heap, (stream.pending[0][2], next(self._counter), stream))
        stream.in_heap = True
        if self._wake is not None and len(self._heap) >= self._wake_at:
            self._wake.set()

    # -- the scheduler ---------------------------------------------------------------------------
    async def run(self) -> None:
        """The scheduling loop; runs until :meth:`stop` (cancel-safe)."""
        self._wake = asyncio.Event()
        self._free = asyncio.Semaphore(max(1, self.workers))
        try:
            while True:
                await self._free.acquire()
                try:
                    batch = await self._collect()
                except BaseException:
                    self._free.release()
                    raise
                if batch is None:
                    self._free.release()
                    return
                task = asyncio.create_task(self._run_batch(batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _collect(self) -> list[_Item] | None:
        assert self._wake is not None
        while True:
            self._drop_stale()
            if self._heap:
                break
            if self._stopping:
                return None
            self._wake_at = 1
            self._wake.clear()
            await self._wake.wait()
        if self.max_wait_s > 0:
            while len(self._heap) < self.max_batch:
                delay = self._heap[0][0] + self.max_wait_s - time.monotonic()
                if delay <= 0:
                    break
                self._wake_at = self.max_batch
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except TimeoutError:
                    break
                self._drop_stale()
                if not self._heap:
                    return await self._collect()
        # Take the chunks now, with no await before they are marked in flight: a stream closed between
        # here and the batch's start must not leave the batch an empty queue to pop from.
        items: list[_Item] = []
        while self._heap and len(items) < self.max_batch:
            _, _, stream = heapq.heappop(self._heap)
            stream.in_heap = False
            if not stream.closed and stream.pending:
                seq, chunk, received = stream.pending.popleft()
                stream.in_flight = True
                stream.settled.clear()
                items.append((stream, seq, chunk, received))
        if not items:
            return await self._collect()
        return items

    def _drop_stale(self) -> None:
        while self._heap and (self._heap[0][2].closed or not self._heap[0][2].pending):
            heapq.heappop(self._heap)[2].in_heap = False

    async def _run_batch(self, items: list[_Item]) -> None:
        assert self._free is not None
        start = time.monotonic()
        results: list[ChunkOutcome] | None = None
        error: BaseException | None = None
        try:
            if self.metrics is not None:
                self.metrics.batch_size.observe(len(items))
                observe_many(self.metrics.queue_wait, [start - received for _, _, _, received in items])
            sessions = [s.session for s, *_ in items]
            chunks = [c for _, _, c, _ in items]
            on_split = self.metrics.batch_splits.inc if self.metrics is not None else None
            if self._executor is None or (self._inline is not None and self._inline(chunks)):
                self.inline_batches += 1  # on the event loop's thread (see the module doc)
                results, cpu = _timed_step(self._step, sessions, chunks, self.max_batch, on_split)
            else:
                results, cpu = await asyncio.get_running_loop().run_in_executor(
                    self._executor, _timed_step, self._step, sessions, chunks, self.max_batch, on_split)
            self.worker_cpu_s += cpu
            if self.metrics is not None:
                self.metrics.batch_cpu.inc(cpu)
        except Exception as exc:  # step_streams_contained returns per-stream errors; this is a bug in the scheduling
            error = exc
        finally:
            self._free.release()
            self.batches += 1
            if self.metrics is not None:
                self.metrics.batch_seconds.observe(time.monotonic() - start)
            for stream, *_ in items:
                stream.in_flight = False
                stream.settled.set()
                if stream.pending and not stream.closed and not stream.in_heap:
                    self._ready(stream)
        try:
            if error is not None:
                self._on_failure([(s, seq) for s, seq, _, _ in items], error)
            elif results is not None:
                self._on_results([(s, seq, r, rec) for (s, seq, _, rec), r in zip(items, results)])
        except Exception:  # a bug in a callback must not stop the scheduler; say so loudly
            log.exception("delivering the results of a batch of %d streams failed", len(items))

    # -- shutdown --------------------------------------------------------------------------------
    async def drain(self, streams: Sequence[BatchStream], timeout: float) -> bool:
        """Wait until none of ``streams`` has a chunk queued or in flight; False on timeout."""
        deadline = time.monotonic() + timeout
        while any(s.busy and not s.closed for s in streams) or any(s.in_flight for s in streams):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    def stop(self) -> None:
        """Let :meth:`run` return once no stream is ready (call :meth:`drain` first to finish queued work)."""
        self._stopping = True
        if self._wake is not None:
            self._wake.set()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
