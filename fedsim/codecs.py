"""Wire formats: how vectors become `ArrayRecord`s, with exact byte counts.

`pack`/`unpack` produce and read exactly the bytes Flower's `Array(ndarray)`
does (NumPy's .npy format: a 128-byte header for 1-D float32, then the raw
data), without its BytesIO round trip: one copy to encode, none to read.
So a float32 vector of d entries costs 4*d + 128 bytes plus its key's length
in `ArrayRecord.count_bytes()`.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fedsim.registry import Registry

NPY_STYPE = "numpy.ndarray"


def pack(arr: np.ndarray) -> Array:
    """A Flower Array holding `arr` in .npy format (byte-identical to `Array(arr)`)."""
    if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
        arr = np.ascontiguousarray(arr)
    header = np.lib.format.header_data_from_array_1_0(arr)
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, header)
    body = arr.T if header["fortran_order"] else arr  # C-contiguous either way
    data = b"".join((head.getvalue(), memoryview(body).cast("B")))
    return Array(dtype=str(arr.dtype), shape=tuple(arr.shape), stype=NPY_STYPE, data=data)


def unpack(a: Array) -> np.ndarray:
    """A read-only view of the array inside `a` (no copy)."""
    if a.stype != NPY_STYPE:
        raise TypeError(f"cannot read array of serialization type {a.stype!r}")
    head = io.BytesIO(a.data)
    version = np.lib.format.read_magic(head)
    if version != (1, 0):
        return a.numpy()
    shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)
    flat = np.frombuffer(a.data, dtype=dtype, offset=head.tell())
    return flat.reshape(shape, order="F" if fortran else "C")


def readonly_tensor(arr: np.ndarray) -> torch.Tensor:
    """A CPU tensor sharing `arr`'s memory, for reading only (e.g. an `unpack` view).

    torch warns that such a tensor could be written through; callers only read it.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(arr)


@dataclass(frozen=True)
class Codec:
    """Encode a flat float vector into an ArrayRecord and back."""

    encode: Callable[[np.ndarray], ArrayRecord]
    decode: Callable[[ArrayRecord], np.ndarray]


CODECS: Registry[Codec] = Registry("codec")
VECTOR_KEY = "x"


def _encode_fp32(x: np.ndarray) -> ArrayRecord:
    return ArrayRecord({VECTOR_KEY: pack(np.asarray(x, dtype=np.float32))})


def _decode_fp32(rec: ArrayRecord) -> np.ndarray:
    return unpack(rec[VECTOR_KEY])


CODECS.register("fp32", Codec(_encode_fp32, _decode_fp32), "dense float32 vector, 4 bytes/entry")


def fp32_bytes(d: int) -> int:
    """Bytes `count_bytes()` reports for a d-vector under the fp32 codec (documented header)."""
    return 4 * d + 128 + len(VECTOR_KEY)
