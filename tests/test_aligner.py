"""Aligner / prefix MLP shapes and the noise models' statistics."""

import pytest
import torch

from maccap.aligner import Aligner, AlignerConfig, PrefixMLP, n_trainable
from maccap.errors import UserError
from maccap.noise import NoiseModel


def test_aligner_shapes_and_paper_size():
    cfg = AlignerConfig(n_queries=5, n_heads=2, ffn_dim=16)
    a = Aligner(8, 12, cfg)
    assert a(torch.randn(3, 10, 8)).shape == (3, 5, 12)
    assert a(torch.randn(3, 8)).shape == (3, 5, 12)  # a single feature is a 1-token memory
    layer = a.decoder.layers[0]
    assert layer.norm_first is False and layer.dropout.p == 0.1
    # paper sizes (B/32 width 512, OPT-1.3B width 2048): about 5.8 M parameters
    assert 5.6e6 < n_trainable(Aligner(512, 2048)) < 6.0e6


def test_aligner_attends_to_memory():
    torch.manual_seed(0)
    a = Aligner(8, 4, AlignerConfig(n_queries=3, n_heads=2, ffn_dim=16)).eval()
    m = torch.randn(1, 10, 8)
    assert not torch.allclose(a(m), a(m.flip(-1)))


def test_prefix_mlp_shapes():
    p = PrefixMLP(8, 6, AlignerConfig(prefix_len=2))
    assert p(torch.randn(4, 8)).shape == (4, 2, 6)
    assert p(torch.randn(4, 1, 8)).shape == (4, 2, 6)


def test_isotropic_noise_has_per_dimension_variance():
    g = torch.Generator().manual_seed(0)
    z = NoiseModel.isotropic(0.016).sample((20000, 64), g)
    var = z.var(dim=0)
    # per-coordinate variance 0.016 (std 0.126), not 0.016 / D; chi^2 CI at n=20000 is about +-2%
    assert abs(var.mean().item() - 0.016) < 0.016 * 0.01
    assert (var - 0.016).abs().max().item() < 0.016 * 0.06
    assert abs(z.mean().item()) < 1e-3


def test_noise_seeded_and_renormalised():
    x = torch.nn.functional.normalize(torch.randn(5, 3, 16), dim=-1)
    n = NoiseModel.isotropic(0.016)
    a = n.add(x, torch.Generator().manual_seed(3))
    b = n.add(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.allclose(a.norm(dim=-1), torch.ones(5, 3))
    assert not torch.allclose(a[:, 0], a[:, 1])  # each memory copy gets its own noise


def test_fitted_diagonal_full_and_mean():
    d = 4
    cov = torch.tensor([[0.04, 0.01, 0, 0], [0.01, 0.02, 0, 0], [0, 0, 0.01, 0], [0, 0, 0, 0.005]])
    mean = torch.tensor([0.1, -0.1, 0.0, 0.05])
    fitted = {"sigma2": 0.02, "variances": cov.diagonal().numpy(), "cov": cov.numpy(), "mean": mean.numpy()}
    g = torch.Generator().manual_seed(1)
    full = NoiseModel.from_fitted(fitted, "full", with_mean=True).sample((40000, d), g)
    assert torch.allclose(full.mean(0), mean, atol=0.004)
    assert torch.allclose(torch.cov(full.T), cov, atol=0.002)
    diag = NoiseModel.from_fitted(fitted, "diagonal").sample((40000, d), g)
    assert torch.allclose(diag.var(0), cov.diagonal(), rtol=0.05)
    assert NoiseModel.from_fitted(fitted, "isotropic").variance == 0.02
    with pytest.raises(UserError):
        NoiseModel.from_fitted({"sigma2": 0.1}, "full")
