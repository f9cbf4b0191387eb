"""Wire formats: how vectors become `ArrayRecord`s, with exact byte counts.

`pack`/`unpack` produce and read exactly the bytes Flower's `Array(ndarray)`
does (NumPy's .npy format: a 128-byte header for 1-D float32, then the raw
data), without its BytesIO round trip: one copy to encode, none to read.
So a float32 vector of d entries costs 4*d + 128 bytes plus its key's length
in `ArrayRecord.count_bytes()`.

`codec(spec)` gives the compressors. Each array costs its data plus H = 128
header bytes (any 1-D .npy array) plus 1 for its one-letter key:

  spec         arrays (key: dtype[length])                    count_bytes()
  fp32         x: f4[d]                                       4d + H + 1
  fp16         x: f2[d]                                       2d + H + 1
  bf16         x: u2[d], upper half of each float32 (RNE)     2d + H + 1
  sign         s: u1[ceil(d/8) + 1], sign bits                ceil(d/8) + H + 2
  ternary      t: u1[ceil(d/5) + 1], 5 base-3 digits a byte   ceil(d/5) + H + 2
  scaled_sign  s: as sign; a: f4[1] scale                     ceil(d/8) + 2H + 7
  topk:F       i: uW[k + 1] indices, then d; v: f4[k]         W(k + 1) + 4k + 2H + 2
  randk:F      v: f4[k] raw values; h: u8[2] = (seed, d)      4k + 2H + 18
  qsgd:S       n: f4[1] norm; s: as sign; q: uW[d] levels     Wd + ceil(d/8) + 3H + 8

Bit and trit arrays end with one byte d % 8 (d % 5) so that d can be recovered.
k = min(d, max(1, round(F*d))); W is the byte width of the smallest unsigned
integer holding d (topk) or S (qsgd).
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedsim.registry import Registry

# flwr and torch are imported where a vector is encoded or made a tensor: the registry, which
# validating a scenario reads (`fedsim run` refusing bad input at once), loads neither.
if TYPE_CHECKING:
    import torch
    from flwr.app import Array, ArrayRecord

NPY_STYPE = "numpy.ndarray"


def pack(arr: np.ndarray) -> Array:
    """A Flower Array holding `arr` in .npy format (byte-identical to `Array(arr)`)."""
    from flwr.app import Array

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
    header = _header(bytes(a.data[:NPY_HEADER]))
    if header is None:
        return a.numpy()
    shape, fortran, dtype = header
    flat = np.frombuffer(a.data, dtype=dtype, offset=NPY_HEADER)
    return flat.reshape(shape, order="F" if fortran else "C")


@functools.lru_cache(maxsize=256)
def _header(head: bytes) -> tuple | None:
    """(shape, fortran order, dtype) of a version 1.0 .npy header of exactly NPY_HEADER bytes
    (what `pack` writes for 1-D arrays); None for any other layout. Parsed once per header:
    NumPy's parser evaluates the header text."""
    stream = io.BytesIO(head)
    if np.lib.format.read_magic(stream) != (1, 0):
        return None
    try:
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    except ValueError:  # a longer header (more dimensions): not this fast path
        return None
    return (shape, fortran, dtype) if stream.tell() == NPY_HEADER else None


def readonly_tensor(arr: np.ndarray) -> torch.Tensor:
    """A CPU tensor sharing `arr`'s memory, for reading only (e.g. an `unpack` view).

    torch warns that such a tensor could be written through; callers only read it.
    """
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(arr)


@dataclass(frozen=True)
class Codec:
    """Encode a flat float vector into an ArrayRecord and back.

    `encode(x, rng=None)`: `random` codecs need `rng`, the others ignore it;
    `decode(rec)` gives a float32 vector; `nbytes(d)` is `count_bytes()` of an encoding.
    """

    encode: Callable[..., ArrayRecord]
    decode: Callable[[ArrayRecord], np.ndarray]
    nbytes: Callable[[int], int]
    unbiased: bool = False  # E[decode(encode(x))] == x
    random: bool = False  # encode needs rng
    spec: str = ""


@dataclass(frozen=True)
class CodecFamily:
    """A codec with one parameter, written "name:PARAM" (e.g. "topk:0.01")."""

    param: str  # how PARAM is shown in listings and errors
    make: Callable[[str], Codec]  # PARAM text -> Codec; ValueError if it is bad


CODECS: Registry[Codec] = Registry("codec")
CODEC_FAMILIES: Registry[CodecFamily] = Registry("codec family")
VECTOR_KEY = "x"
NPY_HEADER = 128  # bytes of the .npy header of any 1-D array (NumPy pads it to 64-byte blocks)


def fp32_bytes(d: int) -> int:
    """Bytes `count_bytes()` reports for a d-vector under the fp32 codec (documented header)."""
    return 4 * d + 128 + len(VECTOR_KEY)


def _arrays(*sizes: int) -> int:
    """Bytes of one-letter-keyed arrays with these data sizes."""
    return sum(sizes) + len(sizes) * (NPY_HEADER + 1)


def _flat(x: np.ndarray) -> np.ndarray:
    """`x` as a 1-D float32 array (no copy when it is one already)."""
    return np.asarray(x, dtype=np.float32).reshape(-1)


def _get(rec: ArrayRecord, key: str, *dtypes: type) -> np.ndarray:
    """The array under `key`, checked to have a dtype this codec writes (catches a wrong codec)."""
    if key not in rec:
        raise ValueError(f"record has no array {key!r} (has {list(rec)}): another codec's?")
    arr = unpack(rec[key])
    if arr.dtype not in [np.dtype(t) for t in dtypes]:
        raise ValueError(f"array {key!r} has dtype {arr.dtype}: another codec's?")
    return arr


def _need_rng(rng: np.random.Generator | None, spec: str) -> np.random.Generator:
    if rng is None:
        raise TypeError(f"codec {spec!r} is random: call encode(x, rng=np.random.Generator)")
    return rng


def _uint(n: int) -> np.dtype:
    """The smallest unsigned integer dtype holding 0..n."""
    return np.min_scalar_type(n)


# fp32, fp16, bf16: one dense array under "x".


def _encode_fp32(x: np.ndarray, rng: np.random.Generator | None = None) -> ArrayRecord:
    from flwr.app import ArrayRecord

    return ArrayRecord({VECTOR_KEY: pack(np.asarray(x, dtype=np.float32))})


def _decode_fp32(rec: ArrayRecord) -> np.ndarray:
    return unpack(rec[VECTOR_KEY])


def _encode_fp16(x: np.ndarray, rng: np.random.Generator | None = None) -> ArrayRecord:
    """IEEE half precision: |x| > 65504 becomes inf (NumPy warns of the overflow)."""
    from flwr.app import ArrayRecord

    return ArrayRecord({VECTOR_KEY: pack(_flat(x).astype(np.float16))})


def _decode_fp16(rec: ArrayRecord) -> np.ndarray:
    return _get(rec, VECTOR_KEY, np.float16).astype(np.float32)


def _encode_bf16(x: np.ndarray, rng: np.random.Generator | None = None) -> ArrayRecord:
    """Upper 16 bits of each float32, rounded to nearest even (NaN stays NaN)."""
    from flwr.app import ArrayRecord

    u = _flat(x).view(np.uint32)
    top = (u + (np.uint32(0x7FFF) + ((u >> 16) & 1))) >> 16  # wraps only for NaN, fixed below
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    top[nan] = (u[nan] >> 16) | 0x0040  # quiet NaN, sign kept
    return ArrayRecord({VECTOR_KEY: pack(top.astype(np.uint16))})


def _decode_bf16(rec: ArrayRecord) -> np.ndarray:
    return (_get(rec, VECTOR_KEY, np.uint16).astype(np.uint32) << 16).view(np.float32)


def _dense_bytes(width: int) -> Callable[[int], int]:
    return lambda d: _arrays(width * d)


# Bits and trits, each array ending with a byte d % 8 (d % 5).


def _pack_bits(bits: np.ndarray) -> np.ndarray:
    """Eight booleans a byte (np.packbits), then one byte d % 8."""
    return np.append(np.packbits(bits), np.uint8(bits.size % 8))


def _unpack_bits(packed: np.ndarray) -> np.ndarray:
    n, rest = packed.size - 1, int(packed[-1])
    return np.unpackbits(packed[:-1], count=8 * n - (8 - rest) % 8).view(bool)


def _bits_bytes(d: int) -> int:
    """Bytes of a one-letter-keyed bit array for d entries."""
    return _arrays(-(-d // 8) + 1)


def _plus_minus(bits: np.ndarray) -> np.ndarray:
    """+1.0 where `bits`, else -1.0 (float32)."""
    out = bits.astype(np.float32)
    out *= 2
    out -= 1
    return out


_TRIT_POWERS = 3 ** np.arange(4, -1, -1)
_TRIT_TABLE = ((np.arange(243)[:, None] // _TRIT_POWERS) % 3 - 1).astype(np.float32)  # byte->5


def _pack_trits(digits: np.ndarray) -> np.ndarray:
    """Digits 0..2, five a byte in base 3 (at most 242), then one byte d % 5."""
    d = digits.size
    rows = np.concatenate([digits, np.zeros(-d % 5, np.uint8)]).reshape(-1, 5)
    packed = rows[:, 0].copy()
    for j in range(1, 5):
        packed *= 3
        packed += rows[:, j]
    return np.append(packed, np.uint8(d % 5))


def _unpack_trits(packed: np.ndarray) -> np.ndarray:
    """The values -1.0, 0.0, +1.0 that `_pack_trits` stored as digits 0, 1, 2."""
    n, rest = packed.size - 1, int(packed[-1])
    return _TRIT_TABLE[packed[:-1]].reshape(-1)[: 5 * n - (5 - rest) % 5]


def _trits_bytes(d: int) -> int:
    """Bytes of a one-letter-keyed trit array for d entries."""
    return _arrays(-(-d // 5) + 1)


def _encode_sign(x: np.ndarray, rng: np.random.Generator | None = None) -> ArrayRecord:
    """One bit per entry, set where x >= 0 (sign(0) = +1)."""
    from flwr.app import ArrayRecord

    return ArrayRecord({"s": pack(_pack_bits(_flat(x) >= 0))})


def _decode_sign(rec: ArrayRecord) -> np.ndarray:
    return _plus_minus(_unpack_bits(_get(rec, "s", np.uint8)))


def _encode_ternary(x: np.ndarray, rng: np.random.Generator | None = None) -> ArrayRecord:
    """sign(x) in {-1, 0, +1} (e.g. a majority vote with ties), 1.6 bits an entry."""
    from flwr.app import ArrayRecord

    v = _flat(x)
    digits = (v > 0).view(np.uint8) + (v >= 0).view(np.uint8)  # 0, 1, 2 for -, 0, +
    return ArrayRecord({"t": pack(_pack_trits(digits))})


def _decode_ternary(rec: ArrayRecord) -> np.ndarray:
    return _unpack_trits(_get(rec, "t", np.uint8))


def _encode_scaled_sign(x: np.ndarray, rng: np.random.Generator | None = None) -> ArrayRecord:
    """Sign bits and scale = ||x||_1 / d, as EF-SignSGD sends."""
    from flwr.app import ArrayRecord

    v = _flat(x)
    scale = np.abs(v).sum(dtype=np.float64) / v.size if v.size else 0.0
    return ArrayRecord(
        {"s": pack(_pack_bits(v >= 0)), "a": pack(np.array([scale], dtype=np.float32))}
    )


def _decode_scaled_sign(rec: ArrayRecord) -> np.ndarray:
    out = _decode_sign(rec)
    out *= _get(rec, "a", np.float32)[0]
    return out


def _register(name: str, doc: str, *fns: Callable, unbiased: bool = False) -> None:
    """Register a parameter-free codec from its encode, decode and nbytes functions."""
    CODECS.register(name, Codec(*fns, unbiased=unbiased, spec=name), doc)


_register(
    "fp32", "dense float32, 4 bytes/entry", _encode_fp32, _decode_fp32, fp32_bytes, unbiased=True
)
_register("fp16", "float16, 2 bytes/entry", _encode_fp16, _decode_fp16, _dense_bytes(2))
_register("bf16", "bfloat16 (RNE), 2 bytes/entry", _encode_bf16, _decode_bf16, _dense_bytes(2))
_register("sign", "sign bits, sign(0) = +1", _encode_sign, _decode_sign, _bits_bytes)
_register("ternary", "{-1, 0, 1}, 1.6 bits/entry", _encode_ternary, _decode_ternary, _trits_bytes)
_register(
    "scaled_sign",
    "sign bits * ||x||_1/d (EF-SignSGD)",
    _encode_scaled_sign,
    _decode_scaled_sign,
    lambda d: _bits_bytes(d) + _arrays(4),
)


# Sparsifiers and QSGD: one parameter each.


def _fraction(text: str) -> float:
    try:
        f = float(text)
    except ValueError:
        f = math.nan
    if not 0 < f <= 1:
        raise ValueError(f"FRACTION must be a number in (0, 1], got {text!r}")
    return f


def _k(fraction: float, d: int) -> int:
    """How many entries a sparsifier keeps: max(1, round(fraction*d)), at most d."""
    return min(d, max(1, round(fraction * d)))


def _topk(text: str) -> Codec:
    """The k largest |x_i|: sorted indices with d appended, and their float32 values."""
    fraction, spec = _fraction(text), f"topk:{text}"

    def encode(x: np.ndarray, rng: np.random.Generator | None = None) -> ArrayRecord:
        from flwr.app import ArrayRecord

        v = _flat(x)
        d, k = v.size, _k(fraction, v.size)
        idx = np.sort(np.argpartition(np.abs(v), d - k)[d - k :]) if k < d else np.arange(d)
        return ArrayRecord({"i": pack(np.append(idx, d).astype(_uint(d))), "v": pack(v[idx])})

    def decode(rec: ArrayRecord) -> np.ndarray:
        idx = _get(rec, "i", np.uint8, np.uint16, np.uint32, np.uint64)
        out = np.zeros(int(idx[-1]), np.float32)
        out[idx[:-1]] = _get(rec, "v", np.float32)
        return out

    def nbytes(d: int) -> int:
        k = _k(fraction, d)
        return _arrays((k + 1) * _uint(d).itemsize, 4 * k)

    return Codec(encode, decode, nbytes, spec=spec)


def _randk(text: str) -> Codec:
    """k uniform entries, scaled by d/k on decode (unbiased); the seed names the indices."""
    fraction, spec = _fraction(text), f"randk:{text}"

    def indices(seed: int, d: int, k: int) -> np.ndarray:
        return np.random.default_rng(seed).choice(d, size=k, replace=False)

    def encode(x: np.ndarray, rng: np.random.Generator | None = None) -> ArrayRecord:
        from flwr.app import ArrayRecord

        v = _flat(x)
        d, k = v.size, _k(fraction, v.size)
        seed = int(_need_rng(rng, spec).integers(2**63))
        values = v[indices(seed, d, k)]
        return ArrayRecord({"v": pack(values), "h": pack(np.array([seed, d], np.uint64))})

    def decode(rec: ArrayRecord) -> np.ndarray:
        seed, d = (int(n) for n in _get(rec, "h", np.uint64))
        values = _get(rec, "v", np.float32)
        out = np.zeros(d, np.float32)
        if values.size:
            out[indices(seed, d, values.size)] = values * np.float32(d / values.size)
        return out

    def nbytes(d: int) -> int:
        return _arrays(4 * _k(fraction, d), 16)

    return Codec(encode, decode, nbytes, unbiased=True, random=True, spec=spec)


def _qsgd(text: str) -> Codec:
    """QSGD (Alistarh et al. 2017): ||x||_2, signs, and |x_i|/||x|| * s rounded at random."""
    try:
        s = int(text)
    except ValueError:
        s = 0
    if not 1 <= s <= 65535:
        raise ValueError(f"LEVELS must be an integer in [1, 65535], got {text!r}")
    spec, level = f"qsgd:{text}", _uint(s)

    def encode(x: np.ndarray, rng: np.random.Generator | None = None) -> ArrayRecord:
        from flwr.app import ArrayRecord

        v = _flat(x)
        rng = _need_rng(rng, spec)
        norm = np.float32(math.sqrt(np.square(v, dtype=np.float64).sum()))  # no overflow
        if not np.isfinite(norm):
            raise ValueError(f"codec {spec!r}: the vector's norm is not finite")
        r = np.abs(v)  # becomes |x_i| / norm * s in [0, s]
        if norm > 0:
            r /= norm  # before * s: s / norm can overflow float32
            r *= s
        np.minimum(r, s, out=r)
        floor = np.floor(r)
        r -= floor  # the chance of rounding up
        q = floor.astype(level)
        q += rng.random(v.size, dtype=np.float32) < r
        return ArrayRecord(
            {
                "n": pack(np.array([norm], np.float32)),
                "s": pack(_pack_bits(v >= 0)),
                "q": pack(q),
            }
        )

    def decode(rec: ArrayRecord) -> np.ndarray:
        out = _plus_minus(_unpack_bits(_get(rec, "s", np.uint8)))
        out *= _get(rec, "q", level)
        out *= _get(rec, "n", np.float32)[0] / np.float32(s)
        return out

    def nbytes(d: int) -> int:
        return _bits_bytes(d) + _arrays(4, level.itemsize * d)

    return Codec(encode, decode, nbytes, unbiased=True, random=True, spec=spec)


CODEC_FAMILIES.register("topk", CodecFamily("FRACTION", _topk), "largest |x_i|: indices + values")
CODEC_FAMILIES.register("randk", CodecFamily("FRACTION", _randk), "random entries * d/k, unbiased")
CODEC_FAMILIES.register("qsgd", CodecFamily("LEVELS", _qsgd), "QSGD stochastic levels, unbiased")


def codec_names() -> list[str]:
    """Every spec form, e.g. "sign", "topk:FRACTION" (for listings and error messages)."""
    return CODECS.names() + [f"{e.name}:{e.obj.param}" for e in CODEC_FAMILIES]


@functools.lru_cache(maxsize=64)
def codec(spec: str) -> Codec:
    """The codec `spec` names: "fp32", "sign", "topk:0.01", "qsgd:16", ... (else ValueError)."""
    name, colon, param = spec.partition(":")
    if name in CODECS and not colon:
        return CODECS.get(name)
    if name in CODEC_FAMILIES and param:
        try:
            return CODEC_FAMILIES.get(name).make(param)
        except ValueError as e:
            raise ValueError(f"codec {spec!r}: {e}") from None
    raise ValueError(f"codec {spec!r} is not one of {codec_names()}")


def roundtrip(v: torch.Tensor, spec: str) -> torch.Tensor:
    """decode(encode(v)) on v's device: what a receiver of v in format `spec` holds
    (`spec` deterministic); for a [C, d] tensor, of each row."""
    import torch

    c = codec(spec)
    rows = v.detach().cpu().numpy().reshape(-1, v.shape[-1])
    out = np.stack([c.decode(c.encode(row)) for row in rows]).reshape(v.shape)
    return torch.from_numpy(out).to(v.device)


def with_feedback(
    v: torch.Tensor, e: torch.Tensor | None, spec: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Error feedback (Karimireddy et al., 2019): C(v + e) as the receiver decodes it, and the
    new memory (v + e) - C(v + e), so what compression drops is sent later."""
    p = v if e is None else v + e
    sent = roundtrip(p, spec)
    return sent, p - sent


def check_codec_spec(spec: str) -> str:
    """`spec` if `codec(spec)` accepts it, else ValueError (a pydantic validator)."""
    codec(spec)
    return spec
