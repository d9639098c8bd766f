"""Subregion proximity: crop geometry, the mismatched-caption control, and a planted effect."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis import subregion as S


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_grid_and_sliding_boxes_cover_the_image() -> None:
    g = S.grid_boxes(3)
    assert len(g) == 9 and sum((b[2] - b[0]) * (b[3] - b[1]) for b in g) == pytest.approx(1.0)
    sw = S.sliding_boxes(0.5, 0.25)
    assert len(sw) == 9 and max(b[2] for b in sw) == pytest.approx(1.0)
    sw = S.sliding_boxes(0.67, 1 / 6)
    assert max(b[2] for b in sw) == pytest.approx(1.0) and min(b[0] for b in sw) == 0.0
    names = S.crop_sets(S.SubregionConfig())
    assert set(names) == {"grid2", "grid3", "slide50", "slide67"}


def test_mismatched_captions_never_point_to_the_same_image() -> None:
    ti = np.repeat(np.arange(30), 5)
    c = S.mismatched_captions(ti, seed=3)
    assert (ti[c] != ti).all()
    np.testing.assert_array_equal(c, S.mismatched_captions(ti, seed=3))
    with pytest.raises(ValueError):
        S.mismatched_captions(np.zeros(4, dtype=int), 0)


def _synthetic_world(n_img: int = 200, n_obj: int = 4, dim: int = 64, seed: int = 0):
    """Fabricated features where the answer is known.

    Each image holds n_obj objects (one per 2x2 cell) with random feature directions plus a shared
    'style' direction; the whole image is the normalised sum, a cell crop is its object. Caption 0
    names one object, caption 1 names all of them. A crop should win for the one-object caption and
    lose for the all-objects caption; a mismatched caption shows only the max-of-K selection effect.
    """
    rng = np.random.default_rng(seed)
    style = _unit(rng.standard_normal(dim))
    obj = _unit(rng.standard_normal((n_img, n_obj, dim))) + 0.5 * style
    noise = lambda *s: 0.03 * rng.standard_normal(s)  # noqa: E731
    whole = _unit(obj.sum(axis=1) + noise(n_img, dim))
    crops = _unit(obj + noise(n_img, n_obj, dim))
    named = rng.integers(0, n_obj, n_img)
    one = _unit(obj[np.arange(n_img), named] + noise(n_img, dim))
    every = _unit(obj.sum(axis=1) + noise(n_img, dim))
    text = np.concatenate([one, every])
    ti = np.concatenate([np.arange(n_img), np.arange(n_img)])
    partial = np.concatenate([np.ones(n_img, bool), np.zeros(n_img, bool)])
    return whole, {"grid2": crops}, text, ti, partial


def test_planted_subregion_effect_shows_for_partial_captions_only() -> None:
    whole, crops, text, ti, partial = _synthetic_world()
    res = S.subregion_study(whole, crops, text, ti, partial, seed=0)
    k = res["kinds"]["grid2"]
    part, full = k["split"]["partial"], k["split"]["full"]
    assert part["matched"]["win_rate"] > 0.95
    assert full["matched"]["win_rate"] < 0.1  # naming everything: the whole image is closer
    # the selection effect alone makes the best crop win often for an unrelated caption ...
    assert 0.3 < part["control"]["win_rate"] < 0.95
    # ... so the finding is the difference, which is large for partial captions only
    assert part["matched"]["best_minus_whole_mean"] > 5 * abs(part["control"]["best_minus_whole_mean"])
    assert full["matched"]["best_minus_whole_mean"] < 0
    assert k["effect"]["wilcoxon_p_vs_control"] < 1e-6
    m = res["metrics"]
    assert {"win_rate.grid2", "wilcoxon_p.grid2", "win_rate_control.grid2", "win_rate_partial.grid2"} <= set(m)
    assert res["best_index"]["grid2"].shape == (len(ti),)


def test_no_effect_without_structure() -> None:
    rng = np.random.default_rng(5)
    whole = _unit(rng.standard_normal((150, 32)))
    crops = {"grid3": _unit(whole[:, None, :] + 0.5 * rng.standard_normal((150, 9, 32)))}
    text = _unit(rng.standard_normal((300, 32)))
    ti = np.repeat(np.arange(150), 2)
    res = S.subregion_study(whole, crops, text, ti, seed=1)
    k = res["kinds"]["grid3"]
    assert abs(k["effect"]["win_rate_diff"]) < 0.12  # matched and control alike: no finding
    assert k["effect"]["wilcoxon_p_vs_control"] > 1e-3


class _FakeBackbone:
    """Encodes an image as its mean colour, to check the cropping and batching plumbing."""

    def encode_image(self, images):
        x = torch.tensor(np.stack([np.asarray(im, dtype=np.float32).mean(axis=(0, 1)) for im in images]))
        return torch.nn.functional.normalize(x + 1e-3, dim=-1)


def test_encode_crops_batches_and_orders_crops() -> None:
    from PIL import Image

    arr = np.zeros((40, 40, 3), dtype=np.uint8)
    arr[:20, :20, 0] = 255  # top-left red
    arr[20:, 20:, 2] = 255  # bottom-right blue
    images = [Image.fromarray(arr)] * 5
    f = S.encode_crops(_FakeBackbone().encode_image, images, S.grid_boxes(2), batch_size=8)
    assert f.shape == (5, 4, 3)
    assert f[0, 0].argmax() == 0 and f[0, 3].argmax() == 2
    np.testing.assert_allclose(f[0], f[4])


def test_partial_flags_from_records() -> None:
    recs = [{"scene": [{}, {}, {}], "caption_objects": [[0], [0, 1, 2], [2, 2]]}]
    flags, named = S.partial_flags(recs)
    assert flags.tolist() == [True, False, True] and named.tolist() == [1, 3, 1]
    assert S.partial_flags([{"captions": ["a"]}]) is None


# ---- end to end: both commands on the tiny quickstart world with a tiny random backbone -----------
@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    from maccap.world import WorldConfig, ensure_world

    root = tmp_path_factory.mktemp("world") / "tiny"
    ensure_world(root, seed=0, config=WorldConfig.preset("tiny"), progress=False)
    return root


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    from safetensors.torch import save_file

    from maccap.backbones import _open_clip

    torch.manual_seed(0)
    model = _open_clip().create_model("qs-vit", pretrained=None)
    path = tmp_path_factory.mktemp("bb") / "qs-vit-random.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return f"qs-vit@{path}"


@pytest.mark.parametrize("task,figures", [("gap", False), ("subregion", False),
                                          pytest.param("gap", True, marks=pytest.mark.slow),
                                          pytest.param("subregion", True, marks=pytest.mark.slow)])
def test_commands_write_results_figures_and_markdown(tmp_path, tiny_world, tiny_backbone, task, figures) -> None:
    import json

    from click.testing import CliRunner

    from benchmark.cli import cli
    from maccap.data import load_split

    records = load_split(tiny_world, "test").records
    res = tmp_path / "results"
    extra = ["--reservoir-size", "50"] if task == "gap" else ["--attention-k", "4", "--max-images", "8"]
    extra += [] if figures else ["--no-figures"]
    out = CliRunner().invoke(cli, [task, "--backbone", tiny_backbone, "--dataset", str(tiny_world), "--seed", "3",
                                   "--results-dir", str(res), "--no-progress", *extra])
    assert out.exit_code == 0, out.output + repr(out.exception)
    path = next(res.rglob("result.json"))
    result = json.loads(path.read_text())
    assert result["status"] == "ok" and result["task"] == task
    m = result["metrics"]
    if task == "gap":
        assert {"centroid_gap", "isotropic_sigma2", "normality_reject_fraction", "zero_mean_p",
                "retrieval.i2t_r1", "logit_scale"} <= set(m) | set(result["skipped_metrics"])
        assert m["centroid_gap"] > 0 and result["counts"]["pairs"] == sum(len(r.captions) for r in records)
        from analysis.gap import load_noise_model

        assert load_noise_model(path.parent / "noise_model.safetensors").mean.shape == (128,)
        assert not figures or (path.parent / "gap_spectrum.svg").is_file() and (path.parent / "gap_qq.png").is_file()
        assert "centroid gap" in (path.parent / "gap.md").read_text()
    else:
        for kind in ("grid2", "grid3", "slide50", "slide67", "attn4", "attn4+cls"):
            assert 0 <= m[f"win_rate.{kind}"] <= 1 and f"win_rate_control.{kind}" in m
        assert "wilcoxon_p.grid2" in m or "wilcoxon_p.grid2" in result["skipped_metrics"]
        partial = sum(len(set(o)) < len(r.scene) for r in records[:8] for o in r.caption_objects)
        assert "win_rate_partial.grid2" in m and result["counts"]["partial_captions"] == partial
        assert not figures or (path.parent / "subregion_image_grid.png").is_file()
        assert "Subregion proximity" in (path.parent / "subregion.md").read_text()
        items = [json.loads(line) for line in (path.parent / "items.jsonl").read_text().splitlines()]
        assert len(items) == sum(len(r.captions) for r in records[:8])
        first = items[0]  # what the report draws: the best box crop of the caption, on its image
        assert first["image_name"] == records[0].image_name and first["best_box_kind"] in ("grid2", "grid3", "slide50", "slide67")
        (box,) = first["region_boxes"]
        assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
        assert first[f"best.{first['best_box_kind']}"] == max(first[f"best.{k}"] for k in ("grid2", "grid3", "slide50", "slide67"))
