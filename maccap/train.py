"""Text-only training of the bridge (aligner or prefix MLP) in front of a causal LM: frozen, or for
methods with `finetune_lm` (CapDec, DeCap) a copy of it trained with the bridge.

Text features come precomputed (the feature cache); each step builds the memory from them (copies
plus noise, renormalised), maps it to a prefix, and trains on next-token cross entropy over the
caption tokens only. Optimiser: AdamW; schedule: linear warm-up from `warmup_start * lr` over
`warmup_iters` iterations, then a cosine over epochs down to `min_lr_factor * lr`. Every epoch ends
with a checkpoint (bridge weights as safetensors + optimiser/scheduler/RNG state loadable with
`torch.load(weights_only=True)`); a restarted run resumes from the last one and, on the CPU, ends
bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn
from tqdm import tqdm

from maccap.aligner import Aligner, AlignerConfig, PrefixMLP
from maccap.captioning import Captioner
from maccap import faults
from maccap.distributed import DistEnv
from maccap.errors import UserError
from maccap.io import atomic_path, atomic_write_json, hash_config, read_json, sha256_file
from maccap.lm import embed_dim, encode_captions
from maccap.methods import MethodConfig
from maccap.noise import NoiseModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. Defaults follow the paper; `QUICKSTART_TRAIN` is the CPU-sized variant."""

    epochs: int = 8
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_iters: int = 200
    warmup_start: float = 0.01
    min_lr_factor: float = 0.1
    grad_clip: float = 1.0
    max_tokens: int = 25  # BOS + caption + EOS, truncated
    amp: bool = True  # bf16 autocast, used only on CUDA
    max_captions: int | None = None  # train on the first n corpus captions (None: all)
    val_images: int = 4  # val captions logged after each epoch
    aligner: AlignerConfig = field(default_factory=AlignerConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"training config: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        al = d.pop("aligner", {}) or {}
        if isinstance(al, dict):
            bad = sorted(set(al) - set(AlignerConfig.__dataclass_fields__))
            if bad:
                raise UserError(f"training config: unknown aligner option(s) {', '.join(bad)}")
            _check_fields(al, AlignerConfig(), "training config: aligner.")
            al = AlignerConfig(**al)
        _check_fields(d, cls(), "training config: ")
        return cls(aligner=al, **d)


_ZERO_OK = {"weight_decay", "dropout", "warmup_iters", "val_images", "min_lr_factor", "warmup_start"}


def _check_fields(values: dict[str, Any], defaults: Any, where: str) -> None:
    """Each value has its default's type (None allowed where the default is None); numbers finite and > 0."""
    for k, v in values.items():
        default = getattr(defaults, k)
        if v is None and (default is None or k in ("max_captions", "mlp_hidden")):
            continue
        if isinstance(default, bool):
            ok = isinstance(v, bool)
        elif isinstance(default, float):
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        else:
            ok = isinstance(v, int) and not isinstance(v, bool)
        if not ok:
            want = "true/false" if isinstance(default, bool) else "a number" if isinstance(default, float) else "an integer"
            raise UserError(f"{where}{k}: expected {want}, got {type(v).__name__} {v!r}")
        if not isinstance(v, bool) and (not math.isfinite(v) or v < 0 or (v == 0 and k not in _ZERO_OK)):
            raise UserError(f"{where}{k}: {v!r} is out of range; expected a finite number > 0")


# CPU-sized defaults for the quickstart world: 2 passes over 4096 corpus captions at batch 64 (128 steps),
# a small aligner (8 queries, FFN 256). About 10-20 s per captioner on one CPU thread.
QUICKSTART_TRAIN = TrainConfig(epochs=2, batch_size=64, lr=3e-3, warmup_iters=20, max_captions=4096, val_images=2,
                               aligner=AlignerConfig(n_queries=8, n_layers=1, n_heads=4, ffn_dim=256, dropout=0.1,
                                                     prefix_len=1))


def lr_factor(step: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """Multiplier of the base lr at optimiser step `step` (0-based)."""
    if step < config.warmup_iters:
        return config.warmup_start + (1 - config.warmup_start) * step / config.warmup_iters
    epoch = step // max(1, steps_per_epoch)
    cos = 0.5 * (1 + math.cos(math.pi * min(epoch, config.epochs) / max(1, config.epochs)))
    return config.min_lr_factor + (1 - config.min_lr_factor) * cos


def build_bridge(method: MethodConfig, feat_dim: int, lm_dim: int, config: AlignerConfig) -> nn.Module:
    if method.prefix == "aligner":
        return Aligner(feat_dim, lm_dim, config)
    return PrefixMLP(feat_dim, lm_dim, config)


def training_memory(method: MethodConfig, feats: torch.Tensor, noise: NoiseModel,
                    generator: torch.Generator) -> torch.Tensor:
    """[B, D] text features -> [B, M, D]: M copies, each with independent noise, renormalised.

    A [B, M, D] input is a memory built upstream (SynTIC): only the noise is added.
    """
    mem = feats if feats.dim() == 3 else feats[:, None].expand(-1, method.train_memory_tokens, -1)
    if method.image_free:
        return torch.zeros_like(mem)
    return noise.add(mem, generator, renormalise=True)


def lm_inputs(lm: nn.Module, prefix: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor,
              mask_pad_labels: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs_embeds [B, P+L, E], attention_mask [B, P+L], labels [B, P+L]).

    ids = BOS + caption + EOS (+ pads). Labels are -100 on the prefix and on BOS, so the loss covers
    the caption tokens and EOS only; pad positions stay in the labels unless mask_pad_labels (the
    reference's quirk is to leave them in). Pads are always masked out of attention.
    """
    b, p = prefix.shape[:2]
    tok = lm.get_input_embeddings()(ids)
    embeds = torch.cat([prefix.to(tok.dtype), tok], dim=1)
    real = torch.arange(ids.shape[1], device=ids.device)[None] < lengths[:, None].to(ids.device)
    mask = torch.cat([torch.ones(b, p, dtype=torch.long, device=ids.device), real.long()], dim=1)
    tok_labels = ids.clone()
    tok_labels[:, 0] = -100
    if mask_pad_labels:
        tok_labels[~real] = -100
    labels = torch.cat([torch.full((b, p), -100, dtype=torch.long, device=ids.device), tok_labels], dim=1)
    return embeds, mask, labels


def caption_loss(lm: nn.Module, embeds: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                 reduction: str = "mean") -> torch.Tensor:
    """Next-token cross entropy over positions whose label is not -100 (mean, or sum for data parallelism)."""
    logits = lm(inputs_embeds=embeds, attention_mask=mask).logits
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                       ignore_index=-100, reduction=reduction)


# ------------------------------------------------------------------------------------------------
# checkpoints

def _latest(ckpt_dir: Path) -> int | None:
    """Epoch of the last checkpoint whose files match the checksums in latest.json, else None."""
    marker = ckpt_dir / "latest.json"
    if not marker.is_file():
        return None
    try:
        info = read_json(marker, "checkpoint marker")
        epoch = int(info["epoch"])
        sums = info.get("sha256", {})
        d = ckpt_dir / f"epoch{epoch:03d}"
        bad = [name for name, digest in sums.items() if not (d / name).is_file() or sha256_file(d / name) != digest]
    except (UserError, KeyError, TypeError, ValueError) as e:
        log.warning("checkpoint marker %s is unreadable (%s); training from scratch", marker, e)
        return None
    if bad:
        log.warning("checkpoint %s: %s do not match latest.json's checksums; training from scratch", d, ", ".join(bad))
        return None
    return epoch


def weight_files(captioner: Captioner) -> dict[str, nn.Module]:
    """File name -> the trained module it holds: the bridge, and the LM when the method fine-tunes it."""
    files: dict[str, nn.Module] = {"bridge.safetensors": captioner.bridge}
    if captioner.method.finetune_lm:
        files["lm.safetensors"] = captioner.lm
    return files


def save_weights(files: dict[str, nn.Module], directory: Path) -> dict[str, str]:
    """Write each module's weights atomically (tied LM weights stored once); returns name -> sha256."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, module in files.items():
        with atomic_path(directory / name) as tmp:
            if name == "bridge.safetensors":
                save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, str(tmp))
            else:
                save_model(module, str(tmp))
    return {name: sha256_file(directory / name) for name in files}


def load_weights(files: dict[str, nn.Module], directory: Path) -> None:
    """Load what `save_weights` wrote; a file that does not fit its module is a UserError naming it."""
    for name, module in files.items():
        path = directory / name
        try:
            if name == "bridge.safetensors":
                module.load_state_dict(load_file(str(path)))
            else:
                missing, unexpected = load_model(module, str(path))
                if missing or unexpected:
                    raise ValueError(f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
        except (OSError, RuntimeError, ValueError) as e:
            msg = str(e).replace("\n", " ")[:300]
            raise UserError(f"captioner weights {path} do not fit this method/LM/aligner ({type(e).__name__}: {msg}); "
                            f"delete {directory} to retrain") from None


def save_checkpoint(ckpt_dir: Path, epoch: int, files: dict[str, nn.Module], opt: torch.optim.Optimizer,
                    sched: Any, gen: torch.Generator, step: int, history: list[dict[str, Any]]) -> None:
    d = ckpt_dir / f"epoch{epoch:03d}"
    sums = save_weights(files, d)
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "generator": gen.get_state(),
             "torch_rng": torch.get_rng_state(), "epoch": epoch, "step": step,
             "history": [{k: float(v) for k, v in h.items()} for h in history]}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    with atomic_path(d / "state.pt") as tmp:
        torch.save(state, tmp)
    sums["state.pt"] = sha256_file(d / "state.pt")
    atomic_write_json(ckpt_dir / "latest.json", {"epoch": epoch, "step": step, "sha256": sums})


def load_checkpoint(ckpt_dir: Path, epoch: int, files: dict[str, nn.Module], opt: torch.optim.Optimizer, sched: Any,
                    gen: torch.Generator) -> tuple[int, list[dict[str, Any]]]:
    d = ckpt_dir / f"epoch{epoch:03d}"
    load_weights(files, d)
    try:
        state = torch.load(d / "state.pt", weights_only=True, map_location="cpu")
    except (OSError, RuntimeError) as e:
        raise UserError(f"checkpoint {d} is unreadable ({e}); delete {ckpt_dir} to train from scratch") from None
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"]), list(state["history"])


# ------------------------------------------------------------------------------------------------
# the training loop

def fit(captioner: Captioner, text_feats: torch.Tensor, captions: Sequence[str], config: TrainConfig,
        train_seed: int, noise: NoiseModel, ckpt_dir: str | Path | None = None, progress: bool = False,
        val_fn: Callable[[int], list[str]] | None = None, stop_after_epoch: int | None = None,
        dist: DistEnv | None = None) -> dict[str, Any]:
    """Train captioner.bridge in place; resume from `ckpt_dir` when it holds a checkpoint.

    The bridge must already be initialised (seeded) by the caller. `stop_after_epoch` ends the run
    early (after that epoch's checkpoint), to test resuming. `dist` (maccap.distributed, under
    torchrun): every rank trains on its slice of each global batch; only rank 0 writes checkpoints.
    """
    if len(text_feats) != len(captions):
        raise ValueError(f"{len(text_feats)} text features for {len(captions)} captions")
    if len(captions) == 0:
        raise UserError("the training corpus is empty")
    method, lm, bridge = captioner.method, captioner.lm, captioner.bridge
    device = captioner.device
    if method.finetune_lm and dist is not None:
        raise UserError(f"method {method.name!r} fine-tunes the LM, which data-parallel training (torchrun) does "
                        "not support yet; train it in one process")
    files = weight_files(captioner)
    params = [p for m in files.values() for p in m.parameters() if p.requires_grad]
    ids, lengths = encode_captions(captioner.tokenizer, captions, config.max_tokens)
    n = len(ids)
    steps_per_epoch = math.ceil(n / config.batch_size)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps_per_epoch, config))
    gen = torch.Generator().manual_seed(train_seed)
    step, history, start = 0, [], 0
    ckpt = Path(ckpt_dir) if ckpt_dir is not None else None
    if ckpt is not None and (last := _latest(ckpt)) is not None:
        step, history = load_checkpoint(ckpt, last, files, opt, sched, gen)
        start = last + 1
        log.info("resuming %s from epoch %d (step %d)", method.name, last, step)
    use_amp = config.amp and device.type == "cuda"
    model = dist.wrap(bridge) if dist is not None else bridge
    main = dist is None or dist.is_main
    progress = progress and main
    t0 = time.perf_counter()
    seen = 0
    for epoch in range(start, config.epochs):
        bridge.train()
        lm.train(method.finetune_lm)  # a frozen LM stays in eval mode (no dropout)
        perm = torch.randperm(n, generator=gen)
        total, count = 0.0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"train {method.name} epoch {epoch + 1}/{config.epochs}",
                   disable=not progress)
        for b in bar:
            idx = perm[b * config.batch_size:(b + 1) * config.batch_size]
            mem = training_memory(method, text_feats[idx].float(), noise, gen)  # global batch: same noise on all ranks
            width = int(lengths[idx].max())
            rows, real = dist.rows(len(idx)) if dist is not None else (slice(None), True)
            mem, mine = mem[rows].to(device), idx[rows]
            batch_ids, batch_len = ids[mine, :width].to(device), lengths[mine].to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                prefix = model(mem)
                embeds, mask, labels = lm_inputs(lm, prefix, batch_ids, batch_len, method.mask_pad_labels)
                if dist is None:
                    loss = caption_loss(lm, embeds, mask, labels)
                else:
                    local = caption_loss(lm, embeds, mask, labels, reduction="sum")
                    backprop, loss = dist.global_loss(local, (labels[:, 1:] != -100).sum(), real)
            if not torch.isfinite(loss):
                raise UserError(f"training {method.name}: loss is {loss.item()} at step {step} (epoch {epoch + 1}, "
                                f"batch {b + 1}); lower the learning rate (lr={config.lr}) or check the features")
            opt.zero_grad(set_to_none=True)
            (loss if dist is None else backprop).backward()
            nn.utils.clip_grad_norm_(params, config.grad_clip)
            opt.step()
            sched.step()
            step += 1
            seen += len(idx)
            total += loss.item() * len(idx)
            count += len(idx)
            faults.checkpoint("captioner-step")
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        history.append({"epoch": epoch + 1, "loss": total / count, "lr": sched.get_last_lr()[0]})
        log.info("%s epoch %d/%d: mean loss %.4f", method.name, epoch + 1, config.epochs, total / count)
        if val_fn is not None and main:
            bridge.eval()
            lm.eval()
            for cap in val_fn(epoch):
                log.info("  val: %s", cap)
        if ckpt is not None and main:
            save_checkpoint(ckpt, epoch, files, opt, sched, gen, step, history)
            faults.checkpoint("captioner-epoch")
        if ckpt is not None and dist is not None:
            dist.barrier()  # no rank looks for the checkpoint (a resume) before rank 0 has written it
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            break
    bridge.eval()
    lm.eval()
    elapsed = time.perf_counter() - t0
    return {"history": history, "steps": step, "seconds": elapsed,
            "captions_per_s": seen / elapsed if elapsed > 0 and seen else None}


def new_captioner(method: MethodConfig, lm: nn.Module, tokenizer: Any, feat_dim: int, config: TrainConfig,
                  train_seed: int, device: str | torch.device = "cpu") -> Captioner:
    """A freshly initialised bridge (seeded by the train seed) in front of the frozen LM."""
    from maccap.seed import seed_everything

    seed_everything(train_seed)
    bridge = build_bridge(method, feat_dim, embed_dim(lm), config.aligner).to(device)
    return Captioner(method, bridge, lm, tokenizer, feat_dim)


def with_method(captioner: Captioner, method: MethodConfig) -> Captioner:
    """The same trained weights used with another method's inference settings."""
    return replace(captioner, method=method)


# ------------------------------------------------------------------------------------------------
# the cached, end-to-end entry point (used by the caption task, the VQA task and `maccap-bench train`)

def load_corpus_texts(data_dir: str | Path, max_captions: int | None = None) -> list[str]:
    """The text-only training corpus (corpus_train.json), through maccap.data when available."""
    try:
        from maccap.data import load_corpus
    except ImportError:
        corpus = read_json(Path(data_dir) / "corpus_train.json", "training corpus")
    else:
        corpus = load_corpus(data_dir)
    corpus = [str(c) for c in corpus]
    if not corpus:
        raise UserError(f"the training corpus in {data_dir} is empty")
    return corpus[:max_captions] if max_captions else corpus


def captioner_key(method: MethodConfig, backbone_id: str, lm_ident: dict[str, Any], corpus_digest: str,
                  train_seed: int, config: TrainConfig, noise_digest: str | None) -> str:
    lm_key = {k: v for k, v in lm_ident.items() if k != "source"}
    return hash_config({"method": method.train_fields(), "noise_model": noise_digest, "backbone": backbone_id,
                        "lm": lm_key, "corpus": corpus_digest, "seed": train_seed, "train": config.to_dict(), "v": 1})


_LM_MEMO: dict[tuple, tuple[nn.Module, Any]] = {}


def train_or_load(method: MethodConfig, backbone: Any, lm_spec: str, data_dir: str | Path, work_dir: str | Path,
                  train_seed: int, config: TrainConfig = QUICKSTART_TRAIN, lm_config: Any = None,
                  noise: NoiseModel | None = None, noise_digest: str | None = None,
                  device: str | torch.device = "cpu", progress: bool = False,
                  corpus_dir: str | Path | None = None) -> Captioner:
    """The trained captioner for (method training fields, backbone, LM, corpus, seed, config), cached.

    Trained weights live in work_dir/captioners/<key>/ (bridge.safetensors + meta.json); a finished
    entry is loaded, an interrupted one resumes from its last epoch checkpoint. `noise` overrides the
    isotropic training noise (e.g. a fitted model; pass its file hash as noise_digest for the key).
    For DeCap the text-feature memory bank is attached; no other method loads it. `corpus_dir` takes
    the training corpus from another data directory (cross-domain runs); val captions still come
    from `data_dir`. Under torchrun (maccap.distributed) every rank calls this: rank 0 builds the
    shared caches first, all ranks train, rank 0 writes the weights.
    """
    import contextlib
    import copy

    from filelock import FileLock

    from maccap import distributed, features
    from maccap.lm import corpus_hash, lm_identity, load_lm

    work_dir = Path(work_dir)
    corpus_dir = corpus_dir if corpus_dir is not None else data_dir
    corpus = load_corpus_texts(corpus_dir, config.max_captions)
    full_corpus = load_corpus_texts(corpus_dir)
    dist = distributed.current()
    main = dist is None or dist.is_main
    memo = (lm_spec, str(device), corpus_hash(full_corpus), str(work_dir), repr(lm_config))
    if memo not in _LM_MEMO:  # the LM is frozen, so runs in one process can share it
        _LM_MEMO.clear()
        lm_texts, lm_contexts = full_corpus, None
        if lm_spec == "quickstart" and lm_config is not None and lm_config.qa_texts:
            from maccap.lm_corpus import lm_pretraining_corpus

            lm_texts, lm_contexts = lm_pretraining_corpus(corpus_dir, lm_config.seed, lm_config.qa_texts,
                                                          max_tokens=lm_config.max_len - 2,
                                                          cache_dir=work_dir / "lm")
        # rank 0 builds first (the quickstart LM's own file lock serialises sweep workers)
        with dist.main_first() if dist else contextlib.nullcontext():
            _LM_MEMO[memo] = load_lm(lm_spec, device, corpus=lm_texts, contexts=lm_contexts,
                                     cache_dir=work_dir / "lm", config=lm_config, progress=progress)
    lm, tok = _LM_MEMO[memo]
    ident = lm_identity(lm_spec, lm)
    if method.finetune_lm:  # its own trainable copy; the shared frozen LM stays untouched
        lm = copy.deepcopy(lm).requires_grad_(True)
    if noise is None:
        noise = NoiseModel.isotropic(method.train_noise_variance)
    # A blind captioner never sees a feature: backbones of one width share it.
    feature_source = f"blind-{backbone.embed_dim}d" if method.image_free else backbone.id
    key = captioner_key(method, feature_source, ident, corpus_hash(corpus), train_seed, config, noise_digest)
    out = work_dir / "captioners" / key
    feat_cache = work_dir / "features"
    text_feats = None
    captioner = new_captioner(method, lm, tok, backbone.embed_dim, config, train_seed, device)
    synthetic = method.train_source == "synthetic"
    if synthetic:  # SynTIC: wrap the aligner (before its weights load) with the corpus text bank
        from maccap import syntic

        text_feats = features.text_features(backbone, corpus, feat_cache, progress=progress)
        syntic.attach(captioner, method, backbone, text_feats)
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out / ".lock")) if main else contextlib.nullcontext():  # rank 0 speaks for the job
        meta = _finished_captioner(out)
        done = meta is not None if dist is None else dist.broadcast(meta is not None)
        if done:
            meta = meta or _finished_captioner(out)
            load_weights(weight_files(captioner), out)
        else:
            text_feats = features.text_features(backbone, corpus, feat_cache, progress=progress)
            if method.test_memory == "decap-projection":
                captioner.text_bank = text_feats.to(device)
            train_feats = text_feats
            if synthetic:  # SynTIC: memory from rendered images (maccap.syntic)
                train_feats = syntic.prepare_training(captioner, backbone, corpus, text_feats, feat_cache, train_seed,
                                                      progress)
            val_fn = (_val_captions(captioner, backbone, data_dir, feat_cache, config.val_images, progress)
                      if main else None)  # logging only: rank 0
            info = fit(captioner, train_feats, corpus, config, train_seed, noise, out / "ckpt", progress, val_fn,
                       dist=dist)
            sums = save_weights(weight_files(captioner), out) if main else {}
            if main:
                faults.checkpoint("captioner-saved")
            meta = {"key": key, "method": method.train_fields(), "backbone": feature_source, "lm": ident,
                    "corpus_hash": corpus_hash(corpus), "n_captions": len(corpus), "train_seed": train_seed,
                    "config": config.to_dict(), "noise_digest": noise_digest, "history": info["history"],
                    "train_seconds": info["seconds"], "captions_per_s": info["captions_per_s"], "steps": info["steps"]}
            if synthetic:
                meta["syntic"] = captioner.bridge.info
            if dist is not None:
                meta["distributed"] = {"world_size": dist.world_size, "backend": dist.backend}
            if main:
                meta.update({f"{name.split('.')[0]}_sha256": digest for name, digest in sums.items()})
                atomic_write_json(out / "meta.json", meta)
    if dist is not None:
        dist.barrier()  # the weights are on disk before any rank moves on
    captioner.bridge.eval()
    captioner.lm.eval().requires_grad_(False)
    captioner.info = {**meta, "dir": str(out)}
    if method.test_memory == "decap-projection":
        if text_feats is None:
            text_feats = features.text_features(backbone, corpus, feat_cache, progress=progress)
        captioner.text_bank = text_feats.to(device)
    return captioner


def _finished_captioner(out: Path) -> dict[str, Any] | None:
    """meta.json of a finished captioner whose weight files match their recorded checksums, else None (retrain)."""
    meta_path = out / "meta.json"
    if not (meta_path.is_file() and (out / "bridge.safetensors").is_file()):
        return None
    try:
        meta = read_json(meta_path, "captioner metadata")
    except UserError as e:
        log.warning("%s; retraining", e)
        return None
    if not isinstance(meta, dict):
        return None
    for name in ("bridge", "lm"):
        digest, weights = meta.get(f"{name}_sha256"), out / f"{name}.safetensors"
        if digest is not None and (not weights.is_file() or digest != sha256_file(weights)):
            log.warning("captioner weights %s do not match the checksum in %s; retraining", weights, meta_path)
            return None
    return meta


def _val_captions(captioner: Captioner, backbone: Any, data_dir: str | Path, cache: Path, n: int,
                  progress: bool) -> Callable[[int], list[str]] | None:
    """Captions for the first n val images after each epoch (logged); None when there is no val split."""
    if n <= 0 or not (Path(data_dir) / "captions_val.json").is_file():
        return None
    from maccap import features
    from maccap.captioning import caption_images

    names, toks = features.image_tokens(backbone, data_dir, "val", cache, progress=progress)

    def run(epoch: int) -> list[str]:
        res = caption_images(captioner, toks.cls[:n], toks.tokens[:n], toks.attn[:n], None, eval_seed=0)
        return [f"{names[i]}: {r.caption}" for i, r in enumerate(res)]

    return run
