"""The wire format is Flower's own .npy Array format, byte for byte."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedsim.codecs import CODECS, fp32_bytes, pack, unpack


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(10, dtype=np.float32),
        np.random.default_rng(0).normal(size=(3, 5)).astype(np.float64),
        np.arange(17, dtype=np.uint8),
        np.zeros((0,), dtype=np.float32),
        np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)),
    ],
)
def test_pack_is_byte_identical_to_flower_array(arr):
    ours, theirs = pack(arr), Array(arr)
    assert (ours.dtype, ours.shape, ours.stype) == (theirs.dtype, theirs.shape, theirs.stype)
    assert ours.data == theirs.data
    np.testing.assert_array_equal(unpack(theirs), theirs.numpy())


def test_unpack_is_a_read_only_view():
    a = pack(np.ones(4, dtype=np.float32))
    view = unpack(a)
    with pytest.raises(ValueError):
        view[0] = 2.0


@pytest.mark.parametrize("d", [1, 1000, 123_457])
def test_fp32_byte_count_matches_flower_count_bytes(d):
    x = np.random.default_rng(d).normal(size=d).astype(np.float32)
    ours = CODECS.get("fp32").encode(x)
    reference = ArrayRecord({"x": Array(x)})  # built by Flower alone
    assert ours.count_bytes() == reference.count_bytes() == fp32_bytes(d) == 4 * d + 129
    np.testing.assert_array_equal(CODECS.get("fp32").decode(ours), x)
