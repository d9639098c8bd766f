"""Registered captioning methods: MacCap, its baselines and ablations, as explicit hyper-parameters.

Every method is a frozen `MethodConfig`; the names below are the registry. Fields split into what
shapes *training* (`train_fields`, part of the trained captioner's cache key, so e.g. `maccap`,
`maccap-no-subregion` and `maccap-no-rerank` share one trained aligner) and what only changes
inference. Reference quirks are the defaults, with the fix one field away:
`mask_pad_labels=False` (pad tokens count in the loss) and `region_weighting="softmax_probs"`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from maccap.errors import UserError
from maccap.registry import Registry

PREFIXES = ("aligner", "mlp")
TEST_MEMORIES = ("regions", "cls", "decap-projection", "none")
TRAIN_NOISES = ("isotropic", "fitted-isotropic", "fitted-diagonal", "fitted-full")
TRAIN_SOURCES = ("text", "synthetic")  # synthetic: SynTIC (maccap.syntic)


@dataclass(frozen=True)
class MethodConfig:
    name: str
    description: str = ""
    # --- training ---
    prefix: str = "aligner"  # "aligner" (queries + decoder over a memory) or "mlp" (one feature -> prefix)
    train_memory_tokens: int = 10  # copies of the text feature, each with its own noise
    train_noise: str = "isotropic"  # or fitted-isotropic / fitted-diagonal / fitted-full (needs noise_model)
    train_noise_variance: float = 0.016  # per-dimension variance of the isotropic noise (0 = no noise)
    noise_model: str | None = None  # path to the gap analysis' fitted noise model
    noise_model_mean: bool = False  # also add the fitted mean offset
    mask_pad_labels: bool = False  # reference quirk: pad tokens are not masked out of the labels
    image_free: bool = False  # the no-image baseline: memory is all zeros in training and at test
    train_source: str = "text"  # "text": caption features (+ noise); "synthetic": SynTIC (maccap.syntic)
    finetune_lm: bool = False  # also train the LM on the captions (CapDec's GPT-2, DeCap's own decoder)
    # --- SynTIC (train_source="synthetic"; meaning and defaults: maccap.syntic.SynticConfig) ---
    syntic_renderer: str = "world"  # world | diffusers (maccap.renderers)
    syntic_renderer_model: str | None = None  # diffusers: hub id or local directory
    syntic_renderer_steps: int = 25
    syntic_render_seed: int | None = 0  # None: render per training seed
    syntic_align: str = "adapter"  # none | mean-shift | adapter
    syntic_align_temperature: float = 0.07
    syntic_align_pull: float = 1.0
    syntic_align_steps: int = 300
    syntic_align_lr: float = 1e-2
    syntic_align_batch: int = 256
    syntic_align_test: bool = True
    syntic_project: bool = True
    syntic_project_temperature: float = 0.01
    syntic_project_exclude_self: bool = False
    syntic_objects: int = 3
    syntic_object_vocab: str | None = None
    # --- inference ---
    test_memory: str = "regions"  # regions | cls | decap-projection | none
    n_regions: int = 10
    region_weight: float = 1.0
    region_weighting: str = "softmax_probs"  # reference quirk; "probs" is the sharper fix
    test_noise_variance: float = 0.016
    n_candidates: int = 4
    rerank: bool = True  # pick the candidate most CLIP-similar to the image (else the first)
    decap_temperature: float = 0.01
    num_beams: int = 4
    max_new_tokens: int = 16

    def __post_init__(self) -> None:
        checks = [("prefix", self.prefix, PREFIXES), ("test_memory", self.test_memory, TEST_MEMORIES),
                  ("train_noise", self.train_noise, TRAIN_NOISES),
                  ("region_weighting", self.region_weighting, ("softmax_probs", "probs"))]
        for field_name, value, allowed in checks:
            if value not in allowed:
                raise UserError(f"method {self.name!r}: {field_name}={value!r}; expected one of {', '.join(allowed)}")
        if self.train_noise.startswith("fitted") and not self.noise_model:
            raise UserError(f"method {self.name!r}: train_noise={self.train_noise!r} needs noise_model (a path "
                            "to the gap analysis' fitted noise model)")
        for field_name in ("train_memory_tokens", "n_regions", "n_candidates", "num_beams", "max_new_tokens"):
            if getattr(self, field_name) < 1:
                raise UserError(f"method {self.name!r}: {field_name} must be >= 1")
        if self.train_noise_variance < 0 or self.test_noise_variance < 0:
            raise UserError(f"method {self.name!r}: noise variances must be >= 0")
        if self.train_source not in TRAIN_SOURCES:
            raise UserError(f"method {self.name!r}: train_source={self.train_source!r}; expected one of "
                            f"{', '.join(TRAIN_SOURCES)}")
        if self.train_source == "synthetic":  # SynTIC builds its own test memory from the image feature
            from maccap.syntic import SynticConfig

            if self.test_memory != "cls" or self.image_free:
                raise UserError(f"method {self.name!r}: train_source='synthetic' needs test_memory='cls' and "
                                "image_free=False (the SynTIC bridge builds the memory from the image feature)")
            SynticConfig.from_method(self)  # validates the syntic_* fields

    def train_fields(self) -> dict[str, Any]:
        """The fields that change the trained weights (the captioner cache key)."""
        keys = ("prefix", "train_memory_tokens", "train_noise", "train_noise_variance", "noise_model",
                "noise_model_mean", "mask_pad_labels", "image_free")
        out = {k: getattr(self, k) for k in keys}
        if self.finetune_lm:  # only then, so the frozen-LM methods' cache keys stay as they were
            out["finetune_lm"] = True
        if self.train_source != "text":  # only then, so the other methods' cache keys stay as they were
            out["train_source"] = self.train_source
            out.update({f.name: getattr(self, f.name) for f in fields(self) if f.name.startswith("syntic_")})
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


METHODS: Registry[MethodConfig] = Registry("method")


def _add(cfg: MethodConfig) -> None:
    METHODS.add(cfg.name, cfg)


_add(MethodConfig("maccap", "MacCap: 10-token noisy memory; subregion memories at test; 4 candidates reranked by CLIP"))
# The baselines adapt their decoder to captions, as their papers do (CapDec fine-tunes GPT-2 with the
# prefix MLP; DeCap trains its decoder): a one-token prefix cannot keep a frozen LM out of its other genres.
_add(MethodConfig("capdec", "CapDec: one prefix token from an MLP, LM fine-tuned with it; noisy text features in "
                  "training, clean image feature at test", prefix="mlp", train_memory_tokens=1, finetune_lm=True,
                  test_memory="cls", test_noise_variance=0.0, n_candidates=1, rerank=False))
_add(MethodConfig("decap", "DeCap: decoder (LM + one-token prefix MLP) trained on clean text features; at test the "
                  "image feature is projected onto the training captions' text features (softmax(sim/0.01))",
                  prefix="mlp", train_memory_tokens=1, finetune_lm=True, train_noise_variance=0.0,
                  test_memory="decap-projection", test_noise_variance=0.0, n_candidates=1, rerank=False))
for _base, _label in (("capdec", "CapDec"), ("decap", "DeCap")):  # the baseline with MacCap's LM recipe
    _add(replace(METHODS.get(_base), name=f"{_base}-frozen-lm", finetune_lm=False,
                 description=f"{_label} ablation: the LM stays frozen (only the prefix MLP trains), as MacCap's"))
_add(MethodConfig("maccap-finetune-lm", "MacCap ablation: the LM is fine-tuned with the aligner, as CapDec's",
                  finetune_lm=True))
_add(MethodConfig("maccap-no-noise", "MacCap ablation: no noise in training or at test (one candidate)",
                  train_noise_variance=0.0, test_noise_variance=0.0, n_candidates=1, rerank=False))
_add(MethodConfig("maccap-no-subregion", "MacCap ablation: CLS feature only at test (no subregions)",
                  test_memory="cls"))
_add(MethodConfig("maccap-no-rerank", "MacCap ablation: one noisy candidate, no CLIP reranking",
                  n_candidates=1, rerank=False))
_add(MethodConfig("maccap-1tok", "MacCap ablation: 1-token training memory instead of 10", train_memory_tokens=1))
_add(MethodConfig("no-image", "Baseline without image information: same LM and aligner, all-zero memory in "
                  "training and at test (the best caption the pipeline can write blind)", image_free=True,
                  train_noise_variance=0.0, test_memory="none", test_noise_variance=0.0, n_candidates=1,
                  rerank=False))

# SynTIC (maccap.syntic) and its ablations: synthetic images instead of noise; one clean candidate at test.
_SYNTIC = dict(train_source="synthetic", train_memory_tokens=1, train_noise_variance=0.0, test_memory="cls",
               test_noise_variance=0.0, n_candidates=1, rerank=False)
_add(MethodConfig("syntic", "SynTIC: trained on CLIP features of images rendered from the training captions, "
                  "pulled toward the caption features by a contrastive adapter, projected onto the corpus text "
                  "features (softmax(sim/0.01)) at train and test, plus 3 salient-object tokens", **_SYNTIC))
_add(MethodConfig("syntic-no-align", "SynTIC ablation: no feature alignment (raw synthetic / real image features)",
                  syntic_align="none", **_SYNTIC))
_add(MethodConfig("syntic-no-project", "SynTIC ablation: no projection onto the corpus text features",
                  syntic_project=False, **_SYNTIC))
_add(MethodConfig("syntic-no-objects", "SynTIC ablation: no salient-object memory tokens", syntic_objects=0,
                  **_SYNTIC))


def get_method(name: str, overrides: dict[str, Any] | None = None) -> MethodConfig:
    """The registered method `name` with `overrides` (field -> value) applied and validated."""
    base = METHODS.get(name)
    if not overrides:
        return base
    known = {f.name for f in fields(MethodConfig)} - {"name"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserError(f"method {name!r}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return replace(base, **overrides)
