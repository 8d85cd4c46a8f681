"""prefetch_to_device: the same batches in the same order, put at most `size` batches ahead."""

import jax
import numpy as np
import pytest

from input_pipeline.device_prefetch import prefetch_to_device


class Source:
    """Batches {"image": [i]} that count how many have been drawn."""

    def __init__(self, count: int | None = None):
        self.drawn = 0
        self.count = count

    def __iter__(self):
        return self

    def __next__(self):
        if self.count is not None and self.drawn == self.count:
            raise StopIteration
        self.drawn += 1
        return {"image": np.full((2, 3), self.drawn - 1, np.float32)}


@pytest.mark.parametrize("size", [0, 1, 2, 5])
def test_same_batches_in_the_same_order_and_bounded_lookahead(size):
    source, puts = Source(), []

    def put(batch):
        puts.append(batch)
        return jax.device_put(batch)

    batches = prefetch_to_device(source, size, put)
    assert source.drawn == 0  # nothing is drawn before the first batch is asked for
    for i in range(8):
        batch = next(batches)
        assert source.drawn == i + 1 + size  # the first: size + 1 drawn
        assert source.drawn == len(puts)  # every drawn batch has been put
        assert isinstance(batch["image"], jax.Array)
        np.testing.assert_array_equal(batch["image"], np.full((2, 3), i, np.float32))


def test_size_zero_is_put_on_demand_and_a_finite_source_ends():
    identity = lambda batch: batch  # noqa: E731
    source = Source(count=3)
    host = list(prefetch_to_device(source, 0, identity))
    assert [int(b["image"][0, 0]) for b in host] == [0, 1, 2]
    assert [int(b["image"][0, 0]) for b in prefetch_to_device(Source(3), 2, identity)] == [0, 1, 2]
    assert list(prefetch_to_device(iter([]), 2, identity)) == []


def test_negative_size_is_refused():
    with pytest.raises(ValueError, match="prefetch size -1 must be >= 0"):
        next(prefetch_to_device(Source(), -1, lambda batch: batch))
