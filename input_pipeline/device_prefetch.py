"""Puts the next batches on the devices while the current step runs (`data.device_prefetch`)."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

Host = TypeVar("Host")
Device = TypeVar("Device")


def prefetch_to_device(
    batches: Iterable[Host], size: int, put: Callable[[Host], Device]
) -> Iterator[Device]:
    """`put(batch)` for each batch of `batches`, in order, started `size` batches ahead.

    `put` is the host -> device copy (e.g. `sharding.host_batch_to_global` on the run's mesh);
    JAX copies asynchronously, so the copies of the next `size` batches overlap the step that
    uses the one yielded. Nothing else changes: the same batches come out in the same order.
    When a batch is yielded at most `size + 1` have been drawn from `batches`; size 0 draws
    and puts each batch only when it is asked for.
    """
    if size < 0:
        raise ValueError(f"prefetch size {size} must be >= 0 (0: off).")
    iterator = iter(batches)
    if size == 0:
        yield from map(put, iterator)
        return
    queue: collections.deque[Device] = collections.deque()

    def enqueue(count: int) -> None:
        queue.extend(map(put, itertools.islice(iterator, count)))

    enqueue(size)
    while queue:
        batch = queue.popleft()
        enqueue(1)  # the copy starts before the caller's step is dispatched
        yield batch
