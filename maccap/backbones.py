"""CLIP backbones behind one registry: quickstart models, open_clip `ARCH/TAG` names and `ARCH@FILE`.

A `Backbone` wraps an open_clip model with the encoders the rest of the project needs: normalised text
and image features, and per-token image features with the last attention layer (for subregions).
Quickstart backbones (`qs-rn`, `qs-vit`) are open_clip architectures registered from JSON configs in
maccap/configs and loaded from safetensors files (the shipped ones in maccap/weights by default).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from maccap.errors import UserError
from maccap.io import sha256_file
from maccap.registry import Registry

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# Sparse storage of the token embedding: only rows of tokens the model was trained on are kept.
SPARSE_ROWS_KEY = "token_embedding.rows"
SPARSE_INDEX_KEY = "token_embedding.index"
NET_TIMEOUT_S = 3.0

_configs_added = False


def _open_clip():
    """Import open_clip once and register the project's model configs with it."""
    global _configs_added
    import open_clip

    if not _configs_added:
        open_clip.add_model_config(CONFIG_DIR)
        _configs_added = True
    return open_clip


@dataclass
class ImageTokens:
    """Per-image features for subregion work. cls [N, D]; tokens [N, T, D] (index 0 = CLS/query); attn [N, T, T]."""

    cls: torch.Tensor
    tokens: torch.Tensor
    attn: torch.Tensor

    def __len__(self) -> int:
        return self.cls.shape[0]


class Backbone:
    """An open_clip model plus its preprocessing and tokenizer, with normalised encoders."""

    def __init__(self, name: str, arch: str, model: nn.Module, preprocess: Callable, tokenizer: Callable,
                 weights_id: str, device: str | torch.device = "cpu", quick_gelu: bool = False,
                 weights_file: str | os.PathLike | None = None) -> None:
        self.name = name
        self.weights_file = Path(weights_file) if weights_file is not None else None
        self.arch = arch
        self.model = model.to(device).eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.weights_id = weights_id
        self.device = torch.device(device)
        self.quick_gelu = quick_gelu

    @property
    def embed_dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        if isinstance(proj, nn.Linear):
            return proj.out_features
        if proj is not None:
            return proj.shape[1]
        return int(self.model.visual.output_dim)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def id(self) -> str:
        """Backbone identity for cache keys: name plus the exact weights."""
        return f"{self.name}#{self.weights_id}"

    def provenance(self) -> dict[str, Any]:
        """Which exact weights: name, tag or file, and the SHA-256 of the file the weights came from."""
        return {"name": self.name, "arch": self.arch, "weights_id": self.weights_id,
                "weights_file": str(self.weights_file) if self.weights_file else None,
                "weights_sha256": _file_sha256(self.weights_file) if self.weights_file else None,
                "quick_gelu": self.quick_gelu, "logit_scale": self.logit_scale}

    def _images(self, images: torch.Tensor | Sequence[Any]) -> torch.Tensor:
        """Accept a preprocessed batch tensor or a list of PIL images."""
        if isinstance(images, torch.Tensor):
            x = images
        else:
            x = torch.stack([self.preprocess(im) for im in images])
        return x.to(self.device, dtype=torch.float32)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self.model.encode_text(tokens, normalize=True).float()

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor | Sequence[Any]) -> torch.Tensor:
        return self.model.encode_image(self._images(images), normalize=True).float()

    @torch.no_grad()
    def encode_image_tokens(self, images: torch.Tensor | Sequence[Any]) -> ImageTokens:
        x = self._images(images)
        visual = self.model.visual
        if _is_modified_resnet(visual):
            return _resnet_tokens(self.model, x)
        if hasattr(visual, "transformer") and hasattr(visual, "ln_post"):
            return _vit_tokens(self.model, x)
        raise UserError(f"backbone {self.name!r}: per-token features are supported for open_clip ViTs and "
                        f"ModifiedResNets only, not {type(visual).__name__}")


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str | None:
    """sha256 of a weights file, memoised on (path, size, mtime): every run of a suite records it."""
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = sha256_file(path)
    return _SHA_MEMO[key]


def _is_modified_resnet(visual: nn.Module) -> bool:
    return hasattr(visual, "attnpool") and hasattr(visual, "layer4")


def _heads_attention(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """Softmax attention [N, T, T] averaged over heads; q, k are [N, T, W] after their projections."""
    n, t, w = q.shape
    hd = w // heads
    q = q.reshape(n, t, heads, hd).transpose(1, 2)
    k = k.reshape(n, t, heads, hd).transpose(1, 2)
    scores = (q * hd ** -0.5) @ k.transpose(-1, -2)
    return scores.softmax(dim=-1).mean(dim=1)


def _capture(module: nn.Module, pre: bool, store: dict[str, torch.Tensor], key: str):
    if pre:
        return module.register_forward_pre_hook(lambda m, args: store.__setitem__(key, args[0]))
    return module.register_forward_hook(lambda m, args, out: store.__setitem__(key, out))


def _vit_tokens(model: nn.Module, x: torch.Tensor) -> ImageTokens:
    """CLS = the model's own pooled feature; tokens = ln_post(all) @ proj; attn recomputed from the last block."""
    visual = model.visual
    if getattr(visual, "attn_pool", None) is not None or visual.proj is None:
        raise UserError("per-token features need a ViT with token pooling and a projection (no attentional pooler)")
    block = visual.transformer.resblocks[-1]
    attn_mod = getattr(block, "attn", None)
    if not isinstance(attn_mod, nn.MultiheadAttention) or not hasattr(block, "ln_1"):
        raise UserError(f"per-token features: unsupported vision block type {type(block).__name__}")
    store: dict[str, torch.Tensor] = {}
    hooks = [_capture(block, True, store, "block_in"), _capture(visual.transformer, False, store, "out")]
    try:
        pooled = model.encode_image(x)
    finally:
        for h in hooks:
            h.remove()
    cls = F.normalize(pooled.float(), dim=-1)
    out, block_in = store["out"], store["block_in"]
    if not visual.transformer.batch_first:  # [T, N, W] -> [N, T, W]
        out, block_in = out.transpose(0, 1), block_in.transpose(0, 1)
    tokens = F.normalize((visual.ln_post(out) @ visual.proj).float(), dim=-1)
    tokens[:, 0] = cls
    h = block.ln_1(block_in)
    q, k, _ = F.linear(h, attn_mod.in_proj_weight, attn_mod.in_proj_bias).chunk(3, dim=-1)
    attn = _heads_attention(q.float(), k.float(), attn_mod.num_heads)
    return ImageTokens(cls=cls, tokens=tokens, attn=attn)


def _resnet_tokens(model: nn.Module, x: torch.Tensor) -> ImageTokens:
    """Query = the attention pool's output; positions = its value path c_proj(v_proj(x)); attn from q/k."""
    pool = model.visual.attnpool
    store: dict[str, torch.Tensor] = {}
    hook = _capture(pool, True, store, "pool_in")
    try:
        pooled = model.encode_image(x)
    finally:
        hook.remove()
    cls = F.normalize(pooled.float(), dim=-1)
    feat = store["pool_in"]
    seq = feat.flatten(2).transpose(1, 2)  # [N, HW, C]
    seq = torch.cat([seq.mean(dim=1, keepdim=True), seq], dim=1) + pool.positional_embedding.to(seq.dtype)
    attn = _heads_attention(pool.q_proj(seq).float(), pool.k_proj(seq).float(), pool.num_heads)
    tokens = F.normalize(pool.c_proj(pool.v_proj(seq)).float(), dim=-1)
    tokens[:, 0] = cls
    return ImageTokens(cls=cls, tokens=tokens, attn=attn)


def to_model_input(images: torch.Tensor, image_size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> normalised float at the model's size (bicubic with antialias when resizing)."""
    x = images.float() / 255.0
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp(0.0, 1.0)
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


class TensorPreprocess:
    """PIL -> model tensor through the same path training uses (to_model_input), so evaluation matches."""

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)

    def __call__(self, image: Any) -> torch.Tensor:
        arr = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None]
        return to_model_input(arr, self.image_size, self.mean, self.std)[0]




# ----------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class QuickstartSpec:
    """A quickstart backbone: an open_clip config in maccap/configs and its shipped weights file."""

    name: str
    description: str

    @property
    def config_path(self) -> Path:
        return CONFIG_DIR / f"{self.name}.json"

    @property
    def shipped_weights(self) -> Path:
        return WEIGHTS_DIR / f"{self.name}.safetensors"


BACKBONES: Registry[QuickstartSpec] = Registry("backbone")
BACKBONES.add("qs-rn", QuickstartSpec("qs-rn", "tiny ModifiedResNet trained on the quickstart world (default)"))
BACKBONES.add("qs-vit", QuickstartSpec("qs-vit", "tiny ViT trained on the quickstart world"))

EXAMPLE_NAMES = ("ViT-B-32/openai", "ViT-L-14/openai", "RN50/openai", "ViT-B-32/laion2b_s34b_b79k",
                 "ViT-B-32@/path/to/weights.safetensors")


def list_backbones() -> list[str]:
    """Registered quickstart names plus examples of the open_clip patterns."""
    return BACKBONES.names() + list(EXAMPLE_NAMES)


def model_config(arch: str) -> dict[str, Any]:
    oc = _open_clip()
    cfg = oc.get_model_config(arch)
    if cfg is None:
        import difflib

        close = difflib.get_close_matches(arch, oc.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UserError(f"unknown open_clip architecture {arch!r}{hint} (see open_clip.list_models())")
    return cfg


def load_backbone(name: str, device: str | torch.device = "cpu", weights: str | os.PathLike | None = None,
                  quick_gelu: bool | None = None) -> Backbone:
    """Resolve `name` (qs-rn, ARCH/TAG, ARCH@FILE) to a Backbone on `device`.

    `weights` overrides the file of a quickstart backbone (a freshly trained checkpoint).
    `quick_gelu` forces the activation choice for local files (None: decide from the name).
    """
    if "@" in name:
        arch, path = name.split("@", 1)
        return _load_arch_file(name, arch, Path(path), device, quick_gelu)
    if "/" in name:
        arch, tag = name.split("/", 1)
        return _load_tag(name, arch, tag, device)
    spec = BACKBONES.get(name)
    path = Path(weights) if weights is not None else spec.shipped_weights
    if not path.is_file():
        raise UserError(f"weights for backbone {name!r} not found at {path}; train them with "
                        f"`maccap-bench clip-train --backbone {name} --world DIR --seed 0`")
    return _load_arch_file(name, spec.name, path, device, quick_gelu=False)


def _tokenizer(arch: str) -> Callable:
    oc = _open_clip()
    try:
        return oc.get_tokenizer(arch)
    except Exception as e:  # hub tokenizers (SigLIP, ...) need a download
        raise UserError(f"the tokenizer of {arch!r} cannot be built offline ({type(e).__name__}: {e}); "
                        "use an architecture with the built-in CLIP tokenizer") from None


def _wants_quick_gelu(arch: str, openai_weights: bool) -> bool:
    """The QuickGELU trap: OpenAI weights were trained with QuickGELU; plain configs build GELU."""
    if openai_weights and not arch.endswith("-quickgelu") and not model_config(arch).get("quick_gelu", False):
        log.info("%s: OpenAI weights on an architecture without QuickGELU; forcing force_quick_gelu=True", arch)
        return True
    return False


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init() -> Iterator[None]:
    """open_clip warns that a model built with pretrained=None is random; the weights load right after."""
    quiet = _DropRandomInitWarning()
    logging.getLogger().addFilter(quiet)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(quiet)


def _load_arch_file(name: str, arch: str, path: Path, device: str | torch.device,
                    quick_gelu: bool | None) -> Backbone:
    oc = _open_clip()
    model_config(arch)
    if not path.is_file():
        raise UserError(f"backbone {name!r}: weights file {path} not found; expected ARCH@/path/to/weights "
                        "(.safetensors, .pt or .bin state dict)")
    force_qg = quick_gelu if quick_gelu is not None else _wants_quick_gelu(arch, "openai" in path.name.lower())
    with _quiet_random_init():
        model, _, preprocess = oc.create_model_and_transforms(arch, pretrained=None, force_quick_gelu=force_qg)
    state = read_state_dict(path)
    load_into(model, state, where=str(path), arch=arch)
    qg = bool(force_qg or arch.endswith("-quickgelu"))
    if arch in BACKBONES:  # quickstart models see images through the same tensor path as in training
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        size = model.visual.image_size
        size = int(size[0] if isinstance(size, (tuple, list)) else size)
        preprocess = TensorPreprocess(size, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
    return Backbone(name, arch, model, preprocess, _tokenizer(arch), _file_sha256(path) or sha256_file(path), device, qg,
                    weights_file=path)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Safe loading only: safetensors, or torch.load(weights_only=True) for .pt/.bin."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read weights file {path}: {type(e).__name__}: {str(e)[:200]} "
                        "(expected a safetensors file or a torch state dict saved with torch.save)") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"weights file {path} does not hold a state dict")
    return {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}


def densify(state: dict[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """Rebuild a full token embedding from its sparse form (unlisted tokens embed to zero)."""
    if SPARSE_ROWS_KEY not in state:
        return state
    state = dict(state)
    rows, index = state.pop(SPARSE_ROWS_KEY).float(), state.pop(SPARSE_INDEX_KEY).long()
    full = torch.zeros(vocab_size, rows.shape[1], dtype=rows.dtype)
    full[index] = rows
    state["token_embedding.weight"] = full
    return state


def sparsify(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep only the non-zero rows of the token embedding (the trained vocabulary)."""
    state = dict(state)
    emb = state.pop("token_embedding.weight")
    index = torch.nonzero(emb.abs().sum(dim=1) > 0).flatten()
    state[SPARSE_ROWS_KEY] = emb[index].contiguous()
    state[SPARSE_INDEX_KEY] = index
    return state


def load_into(model: nn.Module, state: dict[str, torch.Tensor], where: str, arch: str = "") -> None:
    """Load a state dict strictly; a file of another architecture or size is a UserError that says how."""
    vocab = getattr(model, "vocab_size", None) or model.token_embedding.num_embeddings
    try:
        state = densify(state, vocab)
    except (RuntimeError, IndexError, KeyError) as e:
        raise UserError(f"weights {where}: the sparse token embedding does not fit a vocabulary of {vocab} ({e})") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    problem = state_dict_mismatch(model.state_dict(), state)
    if problem:
        target = f"the architecture {arch!r}" if arch else "the architecture"
        raise UserError(f"weights {where} do not match {target}: {problem}; are they the weights of another backbone?")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        msg = str(e).replace("\n", " ")
        raise UserError(f"weights {where} do not match the architecture: {msg[:300]}") from None


def state_dict_mismatch(expected: dict[str, torch.Tensor], got: dict[str, Any]) -> str:
    """'' when `got` has exactly the keys and shapes of `expected`, else a short account of the differences."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [f"{k} is {list(got[k].shape)} in the file, {list(v.shape)} in the model" for k, v in expected.items()
              if k in got and hasattr(got[k], "shape") and tuple(got[k].shape) != tuple(v.shape)]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("with another shape", shapes)):
        if keys:
            parts.append(f"{len(keys)} key(s) {label} (e.g. {', '.join(keys[:2])})")
    return "; ".join(parts)


def _network_unreachable(url: str) -> str | None:
    """Return a reason when a download obviously cannot happen (offline flags, no DNS/route), fast."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MACCAP_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # a proxy decides; let the download try (with its own timeouts)
    host = urlparse(url).hostname or "huggingface.co"
    t0 = time.monotonic()
    try:
        socket.create_connection((host, 443), timeout=NET_TIMEOUT_S).close()
    except OSError as e:
        return f"{host} is unreachable ({type(e).__name__} after {time.monotonic() - t0:.1f} s)"
    return None


def _cached_file(cfg: dict[str, Any]) -> str | None:
    """The already-downloaded weights of a tag, if any (open_clip's URL cache or the HF hub cache)."""
    url = cfg.get("url", "")
    if url:
        p = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if p.is_file():
            return str(p)
    hub = cfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        repo, fname = os.path.split(hub)  # "org/model/" -> default file names, "org/model/file.pt" -> that file
        candidates = [fname] if fname else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for fn in candidates:
            hit = try_to_load_from_cache(repo, fn)
            if isinstance(hit, str):
                return hit
    return None


def _load_tag(name: str, arch: str, tag: str, device: str | torch.device) -> Backbone:
    oc = _open_clip()
    model_config(arch)
    cfg = oc.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = oc.list_pretrained_tags_by_model(arch)
        import difflib

        close = difflib.get_close_matches(tag, tags, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UserError(f"unknown pretrained tag {tag!r} for {arch}{hint} (known: {', '.join(tags) or 'none'})")
    force_qg = bool(cfg.get("quick_gelu", False)) and not model_config(arch).get("quick_gelu", False)
    if force_qg:
        log.info("%s: weights %r were trained with QuickGELU; forcing force_quick_gelu=True", arch, tag)
    cached = _cached_file(cfg)
    source = cfg.get("hf_hub") or cfg.get("url", "")
    if cached is None:
        reason = _network_unreachable(cfg.get("url") or "https://huggingface.co")
        if reason:
            raise UserError(
                f"pretrained weights {name!r} are not cached and cannot be downloaded ({reason}; source: {source}); "
                f"download them on a machine with internet and pass the file as {arch}@/path/to/weights")
    kwargs: dict[str, Any] = {"force_quick_gelu": force_qg}
    try:
        if cached is not None:
            for key in ("mean", "std"):
                if cfg.get(key):
                    kwargs[f"image_{key}"] = cfg[key]
            model, _, preprocess = oc.create_model_and_transforms(arch, pretrained=cached, **kwargs)
        else:
            model, _, preprocess = oc.create_model_and_transforms(arch, pretrained=tag, **kwargs)
    except Exception as e:
        raise UserError(f"cannot load pretrained weights {name!r} ({type(e).__name__}: {str(e)[:200]}); "
                        f"pass a local file as {arch}@/path/to/weights") from None
    return Backbone(name, arch, model, preprocess, _tokenizer(arch), f"tag:{arch}/{tag}", device,
                    bool(force_qg or model_config(arch).get("quick_gelu", False)),
                    weights_file=cached or _cached_file(cfg))  # after a first download the file is in the cache
