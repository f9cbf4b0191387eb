"""Compression codecs: round trips, unbiasedness and exact byte counts (property tests)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedsim.codecs import CODECS, check_codec_spec, codec, codec_names, fp32_bytes, unpack

# derandomize: the same examples every run, and each encode draws from a seeded rng,
# so the statistical tests below are deterministic.
FAST = settings(max_examples=30, deadline=None, derandomize=True)
STATS = settings(max_examples=10, deadline=None, derandomize=True)  # each runs 500 encodes
SPECS = [
    "fp32",
    "fp16",
    "bf16",
    "sign",
    "ternary",
    "scaled_sign",
    "topk:0.01",
    "topk:0.3",
    "randk:0.01",
    "randk:0.3",
    "qsgd:16",
    "qsgd:300",
]
H = 128  # .npy header of a 1-D array; each array also costs 1 byte for its one-letter key
# no subnormals: float32 cannot scale them (d/k, norm/s) without large relative error
FINITE = st.floats(-100, 100, width=32, allow_subnormal=False)


def vectors(min_size=0, max_size=200, elements=None):
    if elements is None:
        elements = st.floats(-1e6, 1e6, width=32)
    return arrays(np.float32, st.integers(min_size, max_size), elements=elements)


def expected_bytes(spec: str, d: int) -> int:
    """count_bytes() of an encoding of a d-vector, written out per format."""
    name, _, param = spec.partition(":")
    bits = math.ceil(d / 8) + 1  # packed signs + one byte d % 8
    k = min(d, max(1, round(float(param or 0) * d)))
    if name == "fp32":
        return 4 * d + H + 1
    if name in ("fp16", "bf16"):
        return 2 * d + H + 1
    if name == "sign":
        return bits + H + 1
    if name == "ternary":
        return math.ceil(d / 5) + 1 + H + 1
    if name == "scaled_sign":
        return (bits + H + 1) + (4 + H + 1)
    if name == "topk":
        width = 1 if d < 2**8 else 2 if d < 2**16 else 4
        return (width * (k + 1) + H + 1) + (4 * k + H + 1)
    if name == "randk":
        return (4 * k + H + 1) + (16 + H + 1)
    if name == "qsgd":
        width = 1 if int(param) < 2**8 else 2
        return (4 + H + 1) + (bits + H + 1) + (width * d + H + 1)
    raise AssertionError(spec)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("d", [0, 1, 7, 8, 9, 255, 256, 1000, 65535, 65536, 100_000])
def test_byte_count_is_the_closed_form(spec, d):
    c = codec(spec)
    x = np.random.default_rng(d).normal(size=d).astype(np.float32)
    rec = c.encode(x, rng=np.random.default_rng(0))
    assert rec.count_bytes() == expected_bytes(spec, d) == c.nbytes(d)
    y = c.decode(rec)
    assert y.shape == (d,) and y.dtype == np.float32


def test_byte_counts_at_1e5():
    d = 100_000
    assert fp32_bytes(d) == 400_129
    assert codec("sign").nbytes(d) == 12_630  # 31.7x less than fp32
    assert codec("ternary").nbytes(d) * 8 / d < 2.1  # 1.61 bits per entry
    assert codec("topk:0.01").nbytes(d) == 8_262
    assert codec("randk:0.01").nbytes(d) == 4_274
    assert codec("qsgd:16").nbytes(d) == 112_892


@FAST
@given(vectors())
def test_fp32_is_exact(x):
    np.testing.assert_array_equal(codec("fp32").decode(codec("fp32").encode(x)), x)


@FAST
@given(vectors(elements=st.floats(-65504, 65504, width=32)))
def test_fp16_within_half_precision(x):
    y = codec("fp16").decode(codec("fp16").encode(x))
    assert np.all(np.abs(y - x) <= 2.0**-11 * np.abs(x) + 2.0**-25)  # half ulp; subnormal step


@FAST
@given(vectors(elements=st.floats(width=32, allow_nan=True, allow_infinity=True)))
def test_bf16_rounds_to_nearest_even_like_torch(x):
    y = codec("bf16").decode(codec("bf16").encode(x))
    reference = torch.from_numpy(x.copy()).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(y, reference)  # NaN where NaN, same value elsewhere
    keep = np.isfinite(y)
    y, x = y[keep], x[keep]
    assert np.all(np.abs(y - x) <= 2.0**-8 * np.abs(x) + 1e-40)  # 7-bit mantissa: half an ulp


@FAST
@given(vectors(elements=st.floats(-1e6, 1e6, width=32) | st.sampled_from([0.0, -0.0])))
def test_sign_decodes_to_plus_minus_one(x):
    y = codec("sign").decode(codec("sign").encode(x))
    np.testing.assert_array_equal(y, np.where(x >= 0, 1.0, -1.0))  # sign(0) = +1


@FAST
@given(vectors(elements=st.sampled_from([-1.0, 0.0, 1.0])) | vectors())
def test_ternary_is_exact_on_its_values(x):
    np.testing.assert_array_equal(codec("ternary").decode(codec("ternary").encode(x)), np.sign(x))


@FAST
@given(vectors())
def test_scaled_sign_is_l1_mean_times_sign(x):
    y = codec("scaled_sign").decode(codec("scaled_sign").encode(x))
    scale = np.float32(np.abs(x.astype(np.float64)).mean()) if x.size else 0.0
    np.testing.assert_array_equal(y, np.where(x >= 0, scale, -scale))


@FAST
@given(vectors(), st.floats(0.001, 1.0))
def test_topk_keeps_exactly_the_k_largest(x, fraction):
    c, d = codec(f"topk:{fraction}"), x.size
    rec = c.encode(x)
    idx = unpack(rec["i"])[:-1].astype(np.int64)
    k = min(d, max(1, round(fraction * d)))
    assert len(np.unique(idx)) == len(idx) == k
    dropped = np.setdiff1d(np.arange(d), idx)
    if k and dropped.size:
        assert np.abs(x[idx]).min() >= np.abs(x[dropped]).max()
    y = c.decode(rec)
    np.testing.assert_array_equal(y[idx], x[idx])
    np.testing.assert_array_equal(y[dropped], 0.0)


def mean_and_spread(c, x, draws):
    """Mean over `draws` encodings, and the mean squared error of one."""
    rng = np.random.default_rng(0)
    ys = np.stack([c.decode(c.encode(x, rng=rng)) for _ in range(draws)]).astype(np.float64)
    return ys.mean(axis=0), ((ys - x) ** 2).sum(axis=1).mean()


@STATS
@given(vectors(min_size=1, max_size=60, elements=FINITE))
def test_randk_is_unbiased(x):
    draws, x64 = 500, x.astype(np.float64)
    c = codec("randk:0.25")
    k, d = max(1, round(0.25 * x.size)), x.size
    mean, mse = mean_and_spread(c, x, draws)
    variance = (x64**2).sum() * (d / k - 1)  # of one draw's error, summed over entries
    assert np.linalg.norm(mean - x64) <= 5 * math.sqrt(variance / draws) + 1e-4 * np.abs(x).max()
    assert mse <= 1.3 * variance + 1e-6


@STATS
@given(vectors(min_size=1, max_size=60, elements=FINITE), st.integers(1, 8))
def test_qsgd_is_unbiased_within_its_variance_bound(x, s):
    draws, x64, d = 500, x.astype(np.float64), x.size
    norm = np.float32(np.linalg.norm(x64))
    r = np.abs(x64) / norm * s if norm else np.zeros(d)
    p = r - np.floor(r)
    variance = (float(norm) / s) ** 2 * (p * (1 - p)).sum()  # exact E||Q(x) - x||^2
    assert variance <= min(d / s**2, math.sqrt(d) / s) * (x64**2).sum() * (1 + 1e-5) + 1e-12
    mean, mse = mean_and_spread(codec(f"qsgd:{s}"), x, draws)
    assert np.linalg.norm(mean - x64) <= 5 * math.sqrt(variance / draws) + 1e-5 * float(norm)
    assert mse <= 1.3 * variance + 1e-5 * float(norm) ** 2


def test_qsgd_levels_use_the_smallest_dtype():
    x = np.random.default_rng(0).normal(size=50).astype(np.float32)
    rng = np.random.default_rng(0)
    assert unpack(codec("qsgd:255").encode(x, rng=rng)["q"]).dtype == np.uint8
    assert unpack(codec("qsgd:256").encode(x, rng=rng)["q"]).dtype == np.uint16
    one_hot = np.array([0, -3, 0], np.float32)  # top level s exactly: must not wrap around
    np.testing.assert_array_equal(
        codec("qsgd:255").decode(codec("qsgd:255").encode(one_hot, rng=rng)), one_hot
    )


def test_unbiased_and_random_flags():
    unbiased = {spec for spec in SPECS if codec(spec).unbiased}
    assert unbiased == {"fp32", "randk:0.01", "randk:0.3", "qsgd:16", "qsgd:300"}
    assert {spec for spec in SPECS if codec(spec).random} == unbiased - {"fp32"}


def test_random_codecs_need_an_rng():
    with pytest.raises(TypeError, match="rng"):
        codec("randk:0.1").encode(np.ones(10, np.float32))
    with pytest.raises(TypeError, match="rng"):
        codec("qsgd:4").encode(np.ones(10, np.float32))


def test_decoding_another_codecs_message_fails_loudly():
    rec = codec("fp16").encode(np.ones(10, np.float32))
    with pytest.raises(ValueError, match="another codec"):
        codec("sign").decode(rec)
    with pytest.raises(ValueError, match="another codec"):
        codec("bf16").decode(rec)


def test_spec_parsing():
    assert codec("fp32") is CODECS.get("fp32")
    assert codec("topk:0.01").spec == "topk:0.01"
    assert codec("qsgd:16") is codec("qsgd:16")  # cached: cheap to call per message
    for spec in ["fp32", "sign", "topk:1", "randk:1e-3", "qsgd:1", "qsgd:65535"]:
        assert check_codec_spec(spec) == spec
    assert "topk:FRACTION" in codec_names() and "sign" in codec_names()
    for spec in ["fp8", "topk", "sign:2", "topk:0", "topk:1.5", "topk:x", "qsgd:0", "qsgd:2.5"]:
        with pytest.raises(ValueError, match=f"codec '{spec}'"):
            check_codec_spec(spec)


@pytest.mark.parametrize("x", [np.zeros(5), np.array([1e-38, -2e-38, 3e-38])])
def test_qsgd_handles_zero_and_tiny_vectors(x):
    c, rng = codec("qsgd:16"), np.random.default_rng(0)
    ys = np.stack([c.decode(c.encode(x, rng=rng)) for _ in range(500)])
    assert np.all(np.isfinite(ys))
    np.testing.assert_allclose(ys.mean(axis=0), x, rtol=0.05, atol=0)
