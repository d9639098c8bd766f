"""Gap analysis against planted ground truth: Gaussian, Laplace, mixture; plus retrieval recall."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from analysis import gap as G
from analysis.moments import StreamingMoments
from analysis.retrieval import recall_at_k
from maccap.errors import UserError


def _pairs(d: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Build (v, t) with v - t = d exactly (t arbitrary), so the analysis sees the planted d."""
    t = np.random.default_rng(seed).standard_normal(d.shape) * 0.05
    return t + d, t


def _run(d: np.ndarray, **cfg) -> G.GapResult:
    v, t = _pairs(d)
    config = G.GapConfig(reservoir_size=cfg.pop("reservoir_size", 2000), **cfg)
    return G.analyze_gap(G.paired_batches(v, t, np.arange(len(d)), batch_size=1500), d.shape[1], config,
                         logit_scale=100.0)


# ---- building blocks ---------------------------------------------------------------------------
def test_dagostino_from_moments_matches_scipy() -> None:
    x = np.random.default_rng(0).gamma(5.0, size=(300, 6))
    m = StreamingMoments.from_batch(x, full_cov=False)
    k2, p = G.dagostino_from_moments(m.skewness(), m.kurtosis(), 300)
    ref = stats.normaltest(x, axis=0)
    np.testing.assert_allclose(k2, ref.statistic, rtol=1e-10)
    np.testing.assert_allclose(p, ref.pvalue, rtol=1e-8)


def test_anderson_statistic_matches_scipy_and_p_is_calibrated() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 1500))
    a2, p = G.anderson_darling(x)
    for j in range(3):
        assert a2[j] == pytest.approx(stats.anderson(x[:, j], method="interpolate").statistic, rel=1e-9)
    assert 0.03 < np.mean(p < 0.05) < 0.07
    _, p_lap = G.anderson_darling(rng.laplace(size=(200, 200)))
    assert np.mean(p_lap < 0.05) > 0.6


def test_bh_matches_scipy_adjusted_p() -> None:
    p = np.random.default_rng(2).uniform(size=200) ** 3
    ours = G.bh_reject(p, 0.05)
    ref = stats.false_discovery_control(p) <= 0.05
    np.testing.assert_array_equal(ours, ref)
    assert not G.bh_reject(np.array([np.nan, 0.5])).any()


@pytest.mark.parametrize("dist", ["gauss", "laplace"])
def test_mean_and_variance_ci_coverage(dist: str) -> None:
    rng = np.random.default_rng(3)
    n, reps = 400, 4000  # 4000 independent intervals of each kind
    x = rng.standard_normal((n, reps)) if dist == "gauss" else rng.laplace(scale=1 / np.sqrt(2), size=(n, reps))
    m = StreamingMoments.from_batch(x, full_cov=False)
    lo, hi = G.mean_ci(m.mean, m.var(), n)
    assert 0.935 < np.mean((lo <= 0) & (0 <= hi)) < 0.965
    vlo, vhi = G.var_ci(m.var(), m.m4, n)
    cover = np.mean((vlo <= 1) & (1 <= vhi))
    assert 0.92 < cover < 0.97  # the kurtosis-aware interval stays near 95% for Laplace too


def test_hotelling_accepts_zero_mean_at_nominal_rate_and_rejects_planted_mean() -> None:
    rng = np.random.default_rng(4)
    cov = np.diag([1.0, 0.5, 0.2, 0.1, 0.05])
    rejects = 0
    for _ in range(400):
        x = rng.standard_normal((80, 5)) @ np.sqrt(cov)
        m = StreamingMoments.from_batch(x)
        rejects += G.hotelling_one_sample(m.mean, m.cov(), m.n)["p"] < 0.05
    assert 0.025 < rejects / 400 < 0.08
    x = rng.standard_normal((2000, 5)) @ np.sqrt(cov) + np.array([0, 0, 0, 0, 0.03])  # 0.13 sd in one dim
    m = StreamingMoments.from_batch(x)
    assert G.hotelling_one_sample(m.mean, m.cov(), m.n)["p"] < 1e-4


def test_hotelling_handles_rank_deficiency() -> None:
    x = np.random.default_rng(5).standard_normal((300, 3)) @ np.array([[1, 0, 1.0], [0, 1, 1.0], [0, 0, 0]])
    m = StreamingMoments.from_batch(x)
    res = G.hotelling_one_sample(m.mean, m.cov(), m.n)
    assert res["df1"] == 2 and 0 <= res["p"] <= 1
    same = StreamingMoments.from_batch(np.ones((4, 3)))  # zero covariance: nothing to test on
    assert np.isnan(G.hotelling_one_sample(same.mean, same.cov(), 4)["p"])


# ---- the full analysis on planted data ---------------------------------------------------------
def test_gaussian_gap_is_recovered_within_its_cis() -> None:
    rng = np.random.default_rng(6)
    dim, n = 16, 6000
    sd = np.linspace(0.05, 0.2, dim)
    mu = np.zeros(dim)
    mu[:4] = 0.02
    d = rng.standard_normal((n, dim)) * sd + mu
    r = _run(d)
    pd = r.per_dim
    assert np.mean((pd["mean_lo"] <= mu) & (mu <= pd["mean_hi"])) >= 0.8
    assert np.mean((pd["var_lo"] <= sd**2) & (sd**2 <= pd["var_hi"])) >= 0.8
    lo, hi = r.report["gap"]["isotropic_sigma2_ci"]
    assert lo <= np.mean(sd**2) <= hi
    assert r.report["metrics"]["zero_mean_p"] < 1e-6  # planted mean found
    assert pd["reject_mean"][:4].all() and pd["reject_mean"][4:].mean() < 0.25
    assert r.report["zero_mean"]["centred_split_sample"]["hotelling"]["p"] > 1e-3  # a fixed offset transfers
    per = r.report["normality"]["per_dim"]
    assert per["shapiro"]["data"] <= 0.125 and per["dagostino_full_n"]["data"] <= 0.125
    assert r.report["normality"]["mardia"]["data"]["kurt_p"] > 1e-3
    assert r.report["gap"]["participation_ratio"] < dim
    assert r.report["metrics"]["logit_scale"] == 100.0


@pytest.mark.parametrize("kind", ["laplace", "mixture"])
def test_non_gaussian_gap_is_rejected_and_control_is_not(kind: str) -> None:
    rng = np.random.default_rng(7)
    n, dim = 5000, 12
    if kind == "laplace":
        d = rng.laplace(scale=0.1, size=(n, dim))
    else:  # two well-separated components per dimension
        d = rng.standard_normal((n, dim)) * 0.05 + np.where(rng.uniform(size=(n, dim)) < 0.5, -0.15, 0.15)
        d[:, 0] *= 3  # the first principal direction carries the bimodality
    r = _run(d)
    per = r.report["normality"]["per_dim"]
    for test in ("shapiro", "dagostino", "anderson"):
        assert per[test]["data"] >= 0.9, test
        assert per[test]["control"] <= 0.2, test
    if kind == "mixture":  # projections mix dimensions, so only the bimodal principal axis must reject
        assert r.report["normality"]["projections"]["principal"]["shapiro"]["min_p"] < 1e-6
    assert r.report["normality"]["mardia"]["data"]["kurt_p"] < 1e-3
    assert r.report["normality"]["mardia"]["control"]["kurt_p"] > 1e-4
    assert r.report["metrics"]["zero_mean_p"] > 1e-4  # zero-mean by construction


def test_unit_norm_features_and_degenerate_dims() -> None:
    rng = np.random.default_rng(8)
    v = rng.standard_normal((3000, 10))
    v[:, 3] = 0  # a dimension no feature uses: zero variance in d
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    t = v + 0.1 * rng.standard_normal(v.shape)
    t[:, 3] = 0
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    r = G.analyze_gap(G.paired_batches(v, t, np.arange(3000)), 10, G.GapConfig(reservoir_size=1000))
    g = r.report["gap"]
    assert g["degenerate_dims"] == 1 and g["rank"] == 9
    assert np.isnan(r.per_dim["p_shapiro"][3])
    assert g["centroid_gap"] == pytest.approx(np.linalg.norm(v.mean(0) - t.mean(0)), rel=1e-12)
    assert np.isfinite(r.report["metrics"]["zero_mean_p"])


def test_one_caption_per_image_and_groups() -> None:
    img = np.random.default_rng(9).standard_normal((20, 4))
    txt = np.random.default_rng(10).standard_normal((100, 4))
    ti = np.repeat(np.arange(20), 5)
    rows = list(G.paired_batches(img, txt, ti, one_per_image=True, seed=1, batch_size=7))
    groups = np.concatenate([b[2] for b in rows])
    assert sorted(groups.tolist()) == list(range(20))
    assert G._half_of(np.repeat(np.arange(50), 5)).reshape(50, 5).std(axis=1).max() == 0  # captions stay together


def test_too_few_pairs_is_a_user_error() -> None:
    with pytest.raises(UserError, match="at least 3"):
        G.analyze_gap([(np.zeros((2, 3)), np.zeros((2, 3)))], 3)


def test_noise_model_round_trip(tmp_path) -> None:
    r = _run(np.random.default_rng(11).standard_normal((500, 6)) * 0.1, reservoir_size=200)
    path = tmp_path / "noise.safetensors"
    G.save_noise_model(path, r.noise)
    back = G.load_noise_model(path)
    np.testing.assert_array_equal(back.cov, r.noise.cov)
    assert back.isotropic_sigma2 == r.noise.isotropic_sigma2 and back.n == 500
    draws = back.sample(20000, "full", seed=0)
    np.testing.assert_allclose(np.cov(draws, rowvar=False), back.cov, atol=0.002)
    assert back.sample(5, "isotropic+mean").shape == (5, 6)
    with pytest.raises(UserError):
        back.sample(1, "laplace")
    from maccap.noise import NoiseModel as CaptionerNoise  # the captioner reads the fitted model as is

    for kind in ("isotropic", "diagonal", "full"):
        assert CaptionerNoise.from_fitted(back, kind, with_mean=True).kind == kind
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(UserError):
        G.load_noise_model(tmp_path / "bad.safetensors")
    with pytest.raises(UserError, match="not found"):
        G.load_noise_model(tmp_path / "missing.safetensors")


# ---- retrieval ---------------------------------------------------------------------------------
def test_recall_planted_and_chance() -> None:
    rng = np.random.default_rng(12)
    img = rng.standard_normal((50, 32))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    ti = np.repeat(np.arange(50), 6)  # 6 captions: the protocol keeps the first 5
    txt = img[ti] + 0.01 * rng.standard_normal((300, 32))
    res = recall_at_k(img, txt, ti)
    assert res["metrics"]["i2t_r1"] == 1.0 and res["metrics"]["t2i_r1"] == 1.0
    assert res["counts"]["captions"] == 250
    rand = rng.standard_normal((300, 32))
    res = recall_at_k(img, rand, ti)
    assert abs(res["metrics"]["t2i_r5"] - 0.1) < 0.06
    assert res["metrics"]["t2i_r1"] <= res["metrics"]["t2i_r5"] <= res["metrics"]["t2i_r10"]


def test_figures_and_markdown_are_written(tmp_path) -> None:
    """Two cheap figures here; the slow end-to-end tests write all of them."""
    from analysis.gap_figures import fig_per_dim_mean, fig_spectrum, save_figure
    from analysis.gap_markdown import gap_section

    r = _run(np.random.default_rng(13).laplace(size=(400, 6)) * 0.1, reservoir_size=300)
    files = {**save_figure(fig_per_dim_mean(r), tmp_path, "gap_per_dim_mean"),
             **save_figure(fig_spectrum(r), tmp_path, "gap_spectrum")}
    assert len(files) == 4 and all((tmp_path / f).stat().st_size > 1000 for f in files.values())
    md = gap_section(r.report, None, files)
    assert "![gap_spectrum](gap_spectrum.png)" in md
    assert all(line.count("|") - line.count("\\|") == 4 for line in md.splitlines() if line.startswith("| "))


def test_split_sample_centred_test_holds_its_level() -> None:
    rng = np.random.default_rng(14)
    groups = np.repeat(np.arange(50), 4)
    in_a = G._half_of(groups) == 0
    rejects = 0
    for _ in range(300):
        d = rng.standard_normal((200, 4)) * [0.1, 0.05, 0.02, 0.01] + 0.3  # a large constant offset
        acc = G.GapAccumulator(4, reservoir_size=10)
        acc.update(d, np.zeros_like(d), groups)
        res = G.hotelling_two_sample(*acc.halves, acc.d)
        full = G.hotelling_two_sample(StreamingMoments.from_batch(d[in_a]), StreamingMoments.from_batch(d[~in_a]))
        assert res["t2"] == pytest.approx(full["t2"], rel=1e-6)  # halves from the total == halves kept whole
        rejects += res["p"] < 0.05
    assert 0.02 < rejects / 300 < 0.09
    drift = np.random.default_rng(15).standard_normal((400, 4)) * 0.05
    ids = np.arange(400)
    drift[G._half_of(ids) == 1] += 0.02  # the offset differs between the halves: it does not transfer
    acc = G.GapAccumulator(4, reservoir_size=10)
    acc.update(drift, np.zeros_like(drift), ids)
    assert G.hotelling_two_sample(*acc.halves, acc.d)["p"] < 1e-3
