"""Run an iterator in a background thread so the accelerator never waits for NumPy to gather a batch.

NumPy releases the GIL while it copies and casts arrays, so one worker thread overlaps batch preparation with the
training step. The queue is bounded (memory stays at `depth` batches), an exception in the worker is re-raised in
the consumer, and `close()` stops the worker even when the consumer leaves early.
"""

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_DONE = object()


class _WorkerError:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher(Generic[T]):
    def __init__(self, source: Iterable[T], depth: int = 2):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._work, args=(iter(source),), name="trm-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        """Blocks while the queue is full; gives up (False) once close() was called."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, source: Iterator[T]) -> None:
        try:
            for item in source:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._put(_WorkerError(e))
        finally:
            close_source = getattr(source, "close", None)
            if close_source is not None:
                close_source()

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _DONE:
            self.close()
            raise StopIteration
        if isinstance(item, _WorkerError):
            self.close()
            raise item.error
        return item

    def close(self) -> None:
        """Stop the worker and drop what it prepared; safe to call more than once."""
        self._finished = True
        self._stop.set()
        while True:  # unblock a worker waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()

    def __enter__(self) -> "Prefetcher[T]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
