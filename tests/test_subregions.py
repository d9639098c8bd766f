"""Subregion selection and aggregation against a hand-computed example."""

import math

import torch

from maccap.subregions import select_regions


def _example():
    # 1 image, 4 tokens in 2-D; CLS row attends most to token 2, then token 0.
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]]])
    attn = torch.tensor([[[0.3, 0.1, 0.5, 0.1],
                          [0.25, 0.25, 0.25, 0.25],
                          [0.0, 1.0, 0.0, 0.0],
                          [0.1, 0.2, 0.3, 0.4]]])
    return tokens, attn


def test_topk_indices_may_include_cls():
    tokens, attn = _example()
    _, idx = select_regions(tokens, attn, k=2)
    assert idx.tolist() == [[2, 0]]


def test_probs_weighting_hand_computed():
    tokens, attn = _example()
    regions, _ = select_regions(tokens, attn, k=2, weighting="probs")
    # region for token 2 = token 1 exactly; region for token 0 = normalise(.3*t0+.1*t1+.5*t2+.1*t3)
    assert torch.allclose(regions[0, 0], torch.tensor([0.0, 1.0]))
    v = torch.tensor([0.3 + 0.5 - 0.1, 0.1 + 0.5])
    assert torch.allclose(regions[0, 1], v / v.norm(), atol=1e-6)


def test_softmax_of_probs_weighting_hand_computed():
    tokens, attn = _example()
    regions, _ = select_regions(tokens, attn, k=1, weighting="softmax_probs")
    # token 2's row [0, 1, 0, 0] -> softmax weights e/(e+3) on token 1, 1/(e+3) elsewhere
    e = math.e
    w = torch.tensor([1, e, 1, 1]) / (e + 3)
    v = (w[:, None] * tokens[0]).sum(0)
    assert torch.allclose(regions[0, 0], v / v.norm(), atol=1e-6)
    assert abs(regions[0, 0].norm().item() - 1) < 1e-6


def test_batched_shapes_and_k_capped():
    tokens = torch.nn.functional.normalize(torch.randn(3, 5, 8), dim=-1)
    attn = torch.randn(3, 5, 5).softmax(-1)
    regions, idx = select_regions(tokens, attn, k=10)
    assert regions.shape == (3, 5, 8) and idx.shape == (3, 5)
    # each image handled independently
    r1, i1 = select_regions(tokens[1:2], attn[1:2], k=10)
    assert torch.allclose(r1[0], regions[1]) and torch.equal(i1[0], idx[1])
