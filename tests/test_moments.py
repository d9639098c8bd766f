"""Streaming moments equal the batch ones; the reservoir is a seeded uniform subsample."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from analysis.moments import Reservoir, StreamingMoments


def _stream(x: np.ndarray, sizes: list[int], **kw) -> StreamingMoments:
    m = StreamingMoments(x.shape[1], **kw)
    s = 0
    for k in sizes:
        m.update(x[s:s + k])
        s += k
    m.update(x[s:])
    return m


def test_streaming_equals_batch_to_1e10() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5003, 24)) @ rng.standard_normal((24, 24)) * 0.3 + 4.0  # offset tests cancellation
    m = _stream(x, [1, 2, 997, 13, 2000])
    assert m.n == len(x)
    np.testing.assert_allclose(m.mean, x.mean(axis=0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(m.cov(), np.cov(x, rowvar=False), rtol=0, atol=1e-10)
    np.testing.assert_allclose(m.skewness(), stats.skew(x, axis=0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(m.kurtosis(), stats.kurtosis(x, axis=0, fisher=False), rtol=0, atol=1e-10)


def test_merge_of_parts_equals_whole_and_diag_mode_agrees() -> None:
    rng = np.random.default_rng(1)
    x = rng.laplace(size=(3000, 8))
    a = StreamingMoments.from_batch(x[:1234]).merge(StreamingMoments.from_batch(x[1234:]))
    whole = StreamingMoments.from_batch(x)
    for attr in ("mean", "m2", "m3", "m4"):
        np.testing.assert_allclose(getattr(a, attr), getattr(whole, attr), rtol=1e-12, atol=1e-9)
    diag = _stream(x, [100, 500], full_cov=False)
    np.testing.assert_allclose(diag.var(), np.diag(whole.cov()), rtol=1e-12)
    np.testing.assert_allclose(diag.m4, whole.m4, rtol=1e-11)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=8), st.integers(0, 2**31 - 1))
def test_any_batching_gives_the_same_moments(sizes: list[int], seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal((sum(sizes) + 3, 3)) * 10 + 100
    m = _stream(x, sizes)
    np.testing.assert_allclose(m.mean, x.mean(axis=0), atol=1e-10)
    np.testing.assert_allclose(m.cov(), np.cov(x, rowvar=False), atol=1e-9)


def test_zero_variance_dimension_is_nan_not_crash() -> None:
    x = np.random.default_rng(2).standard_normal((50, 3))
    x[:, 1] = 0.5
    m = StreamingMoments.from_batch(x)
    assert m.var()[1] == 0
    assert np.isnan(m.skewness()[1]) and np.isfinite(m.skewness()[0])


def test_wrong_shapes_are_rejected() -> None:
    m = StreamingMoments(4)
    with pytest.raises(ValueError):
        m.update(np.zeros((3, 5)))
    with pytest.raises(ValueError):
        StreamingMoments.from_batch(np.zeros(4))


def test_reservoir_is_seeded_and_uniform() -> None:
    stream = np.arange(1000, dtype=float)[:, None]
    counts = np.zeros(1000)
    for seed in range(300):
        r = Reservoir(100, 1, seed)
        for s in range(0, 1000, 37):
            r.update(stream[s:s + 37])
        sample = r.sample()[:, 0]
        assert len(np.unique(sample)) == 100
        counts[sample.astype(int)] += 1
    # each item is kept with probability 0.1: expected 30 of 300; first and last blocks alike
    assert abs(counts[:100].mean() - 30) < 3 and abs(counts[-100:].mean() - 30) < 3
    assert stats.chisquare(counts.reshape(10, 100).sum(axis=1)).pvalue > 1e-3
    a, b = Reservoir(10, 1, 7), Reservoir(10, 1, 7)
    a.update(stream)
    b.update(stream)
    np.testing.assert_array_equal(a.sample(), b.sample())


def test_reservoir_shorter_stream_keeps_everything() -> None:
    r = Reservoir(100, 2, 0)
    r.update(np.ones((30, 2)))
    assert r.sample().shape == (30, 2)


def test_minus_inverts_merge() -> None:
    x = np.random.default_rng(3).standard_normal((700, 5)) + 2
    whole, part = StreamingMoments.from_batch(x), StreamingMoments.from_batch(x[:300])
    rest = whole.minus(part)
    assert rest.n == 400
    np.testing.assert_allclose(rest.mean, x[300:].mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(rest.cov(), np.cov(x[300:], rowvar=False), atol=1e-10)
