"""measure(): peak memory sees numpy allocations, nested blocks keep their own peak."""

import math
import time

import numpy as np
import pytest

from artmed.evaluations.resources import measure

BIG = 80 * 2**20  # bytes


def _allocate_and_free(hold: float = 0.0):
    x = np.ones(BIG // 8)
    time.sleep(hold)
    del x


@pytest.mark.parametrize("method", ["auto", "sampled"])
def test_big_array_has_larger_peak_than_empty_block(method):
    with measure(method) as empty:
        pass
    with measure(method) as big:
        _allocate_and_free(hold=0.05)  # the sampler polls every 5 ms
    assert big.peak_mb > empty.peak_mb + 40
    assert big.seconds > 0 and big.cpu_seconds >= 0
    assert big.method in (("sampled",) if method == "sampled" else ("hwm", "sampled"))
    assert set(big.as_dict()) == {"seconds", "cpu_seconds", "peak_mb", "cuda_peak_mb", "method"}


def test_nested_blocks_keep_their_peaks():
    with measure() as outer:
        _allocate_and_free(hold=0.05)
        with measure() as inner:
            pass
    assert outer.peak_mb > inner.peak_mb + 40


def test_fields_are_nan_inside_the_block_and_params_checked():
    with measure() as cost:
        assert math.isnan(cost.seconds)
    assert not math.isnan(cost.seconds)
    with pytest.raises(ValueError, match="method"):
        with measure("tracemalloc"):
            pass
    with pytest.raises(ValueError, match="interval"):
        with measure(interval=0):
            pass
