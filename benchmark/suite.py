"""Suites: YAML files that declare a whole reproduction (tasks x methods x backbones x seeds).

A suite file is validated completely before anything runs; every problem is a UserError naming the
file and the key path (for example `quickstart.yaml: tasks[3].methods[1]`). Shipped suites live in
benchmark/suites/<name>.yaml; any other YAML path works too.

Schema (every hyper-parameter explicit; see docs in results/README.md):

    x-shared: &shared {...}     # keys starting with x- are ignored: a place for YAML anchors
    name: quickstart            # str, unique
    version: 1                  # int or str, bump when numbers are expected to change
    description: ...            # optional str
    device: cpu                 # optional: cpu | cuda | cuda:N | auto
    dataset:                    # the default dataset of every task entry
      name: quickstart          # quickstart (generated world) or a real dataset name
      world: {seed: 0, preset: default}   # quickstart only
      data_dir: data/coco       # real data only (relative paths: to the working directory)
      label: coco->flickr30k    # optional, the dataset column of tables (default: name)
    backbones: [qs-rn, qs-vit]  # quickstart names, ARCH/TAG or ARCH@FILE
    seeds: [0, 1, 2]            # training seeds
    eval_seeds: [100, 101, 102] # evaluation seeds, paired with `seeds` position by position
    tasks:                      # ordered: later entries reuse artefacts built by earlier ones
      - task: caption           # a registered task
        name: caption           # optional unique entry name used in run ids (default: task)
        methods: [maccap, capdec]   # optional (default: [default])
        backbones: [qs-rn]      # optional subset override
        seeds: [0]              # optional subset of the training seeds (e.g. analyses of fixed weights)
        dataset: {...}          # optional override
        params: {...}           # free-form, handed to the task as ctx.params
        method_params: {maccap: {...}}  # optional per-method overrides merged over params
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from maccap.errors import UserError
from maccap.io import hash_config
from maccap.registry import Registry

log = logging.getLogger(__name__)

SUITES_DIR = Path(__file__).resolve().parent / "suites"
DEFAULT_METHOD = "default"
SEED_MAX = 2**32

# Tasks that are part of the design; a suite may name them before their module exists (the runner
# then records those runs as failed with a clear message) but any other unknown name is a typo.
EXPECTED_TASKS = ("clip", "gap", "subregion", "caption", "vqa", "dummy")

# Methods each task accepts when the task function does not say (attribute `methods`).
# None means the task takes any method name; "registry" means the names in maccap.methods.METHODS.
TASK_METHODS: dict[str, tuple[str, ...] | str | None] = {
    "clip": (DEFAULT_METHOD,),
    "gap": (DEFAULT_METHOD,),
    "subregion": (DEFAULT_METHOD,),
    "caption": "registry",  # maccap.methods.METHODS
    "vqa": None,
    "dummy": None,
}

REAL_DATASETS = ("coco", "flickr30k", "vqav2", "cc3m")

_TOP_KEYS = {"name": str, "version": (int, str), "description": str, "device": str, "dataset": (dict, str),
             "backbones": list, "seeds": list, "eval_seeds": list, "tasks": list}
_TOP_REQUIRED = ("name", "version", "dataset", "backbones", "seeds", "eval_seeds", "tasks")
_TASK_KEYS = {"task": str, "name": str, "methods": list, "backbones": list, "seeds": list,
              "dataset": (dict, str), "params": dict, "method_params": dict}
_DATASET_KEYS = {"name": str, "world": dict, "data_dir": str, "label": str}
_WORLD_KEYS = {"seed": int, "preset": str}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class SeedPair:
    train: int
    eval: int


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    world: dict[str, Any] | None = None  # {"seed": int, "preset": str} for quickstart
    data_dir: str | None = None
    label: str | None = None

    @property
    def is_quickstart(self) -> bool:
        return self.name == "quickstart"

    @property
    def display(self) -> str:
        """The dataset column of tables (`coco`, `coco->flickr30k`, `quickstart`)."""
        return self.label or self.name

    def as_config(self) -> dict[str, Any]:
        return {"name": self.name, "world": self.world, "data_dir": self.data_dir, "label": self.label}


@dataclass(frozen=True)
class TaskSpec:
    name: str  # entry name, used in run ids
    task: str  # registered task function
    methods: tuple[str, ...]
    backbones: tuple[str, ...]
    dataset: DatasetSpec
    params: dict[str, Any] = field(default_factory=dict)
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    seeds: tuple[int, ...] | None = None  # training seeds this entry runs (None: all of the suite's)

    def seed_pairs(self, pairs: tuple[SeedPair, ...]) -> tuple[SeedPair, ...]:
        """The suite's (train, eval) seed pairs this entry runs."""
        return pairs if self.seeds is None else tuple(p for p in pairs if p.train in self.seeds)

    def params_for(self, method: str) -> dict[str, Any]:
        """Entry params with the method's overrides merged over them (nested dicts merged)."""
        return _merge(copy.deepcopy(self.params), self.method_params.get(method, {}))


@dataclass(frozen=True)
class Suite:
    name: str
    version: int | str
    dataset: DatasetSpec
    backbones: tuple[str, ...]
    seeds: tuple[SeedPair, ...]
    tasks: tuple[TaskSpec, ...]
    description: str = ""
    device: str = "cpu"
    path: Path | None = None
    overrides: tuple[str, ...] = ()  # the --set KEY=VALUE options applied to the file, in order

    def entry(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise UserError(f"suite {self.name!r} has no task entry {name!r} (has: {', '.join(t.name for t in self.tasks)})")

    def run_config(self, entry: TaskSpec, method: str, backbone: str, seeds: SeedPair) -> dict[str, Any]:
        """Everything that determines a run's numbers; its hash decides whether a result can be reused.

        A registered captioning method enters with its definition, so a result made before the method
        changed (e.g. CapDec fine-tuning its LM) is never taken for one of the method as it is now.
        """
        from maccap.methods import METHODS

        config = {"task": entry.task, "entry": entry.name, "method": method, "backbone": backbone,
                  "dataset": entry.dataset.as_config(), "params": entry.params_for(method),
                  "seeds": {"train": seeds.train, "eval": seeds.eval}}
        if method in METHODS:
            config["method_definition"] = METHODS.get(method).to_dict()
        return config

    def config_hash(self, entry: TaskSpec, method: str, backbone: str, seeds: SeedPair) -> str:
        return hash_config(self.run_config(entry, method, backbone, seeds))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = _merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


# ----------------------------------------------------------------------------------------------
# Discovery


def list_suites() -> list[str]:
    """Names of the shipped suites (benchmark/suites/*.yaml)."""
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def suites_registry() -> Registry[Path]:
    reg: Registry[Path] = Registry("suite")
    for name in list_suites():
        reg.add(name, SUITES_DIR / f"{name}.yaml")
    return reg


def suite_path(name_or_path: str | Path) -> Path:
    """A shipped suite name or a path to a YAML file."""
    s = str(name_or_path)
    p = Path(s)
    if s.endswith((".yaml", ".yml")) or p.is_file():
        if not p.is_file():
            raise UserError(f"suite file not found: {p}")
        return p
    return suites_registry().get(s)


def load_suite(name_or_path: str | Path, check_registries: bool = True, overrides: Sequence[str] = ()) -> Suite:
    """Read and validate a suite; `check_registries=False` skips task/method/backbone name checks.

    `overrides` are `KEY=VALUE` edits (the CLI's --set) applied to the YAML before validation, so a
    shipped suite can be shrunk or pointed elsewhere without copying it; see `apply_override`.
    """
    path = suite_path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"suite file {path} is not UTF-8") from None
    except OSError as e:
        raise UserError(f"cannot read suite file {path}: {e.strerror or e}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise UserError(f"suite file {path} is malformed YAML{where}: {getattr(e, 'problem', e)}") from None
    for text in overrides:
        raw = apply_override(raw, text, str(path))
    suite = parse_suite(raw, str(path), check_registries=check_registries, path=path)
    return dataclasses.replace(suite, overrides=tuple(overrides))


def apply_override(raw: Any, text: str, where: str) -> Any:
    """Apply one `DOTTED.KEY=VALUE` edit to the suite's YAML object (a copy); VALUE is parsed as YAML.

    Keys of mappings are created when missing (validation then rejects unknown suite keys). In a list,
    a segment is an index, `*` (every element), or an entry name: `tasks.caption.params.lm=tiny-gpt2`
    edits the task entry named (or, without a name, of task) `caption`. Examples:
    `backbones=[qs-rn]`, `seeds=[0]`, `tasks.*.params.batch_size=8`, `tasks.caption.methods=[maccap]`.
    """
    key, sep, value_text = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {text!r}: expected KEY=VALUE such as tasks.caption.params.lm=tiny-gpt2")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except yaml.YAMLError as e:
        raise UserError(f"--set {text!r}: the value is not valid YAML ({getattr(e, 'problem', e)})") from None
    out = copy.deepcopy(raw)
    parts = key.strip().split(".")
    if any(not seg for seg in parts):
        raise UserError(f"--set {text!r}: empty segment in key {key!r}")
    _set_path([out], parts, value, text, where)
    return out


def _set_path(nodes: list[Any], parts: list[str], value: Any, text: str, where: str) -> None:
    head, rest = parts[0], parts[1:]
    for node in nodes:
        if isinstance(node, dict):
            if not rest:
                node[head] = copy.deepcopy(value)
                continue
            if node.get(head) is None:
                node[head] = {}
            _set_path([node[head]], rest, value, text, where)
        elif isinstance(node, list):
            targets = _list_targets(node, head, text, where)
            if not rest:
                for i in targets:
                    node[i] = copy.deepcopy(value)
            else:
                _set_path([node[i] for i in targets], rest, value, text, where)
        else:
            raise UserError(f"--set {text!r}: {where}: cannot go into {head!r} of a {type(node).__name__} value")


def _list_targets(items: list[Any], seg: str, text: str, where: str) -> list[int]:
    if seg == "*":
        return list(range(len(items)))
    if re.fullmatch(r"-?\d+", seg):
        i = int(seg)
        if not -len(items) <= i < len(items):
            raise UserError(f"--set {text!r}: {where}: index {i} out of range (the list has {len(items)} items)")
        return [i % len(items)]
    names = [x.get("name", x.get("task")) if isinstance(x, dict) else None for x in items]
    hits = [i for i, n in enumerate(names) if n == seg]
    if not hits:
        known = ", ".join(str(n) for n in names if n is not None) or "none"
        raise UserError(f"--set {text!r}: {where}: no list entry named {seg!r} (entries: {known}; or use an index or *)")
    return hits


# ----------------------------------------------------------------------------------------------
# Validation


class _V:
    """Collects the file name so every message can say where the problem is."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, key: str, msg: str) -> UserError:
        return UserError(f"{self.where}: {key}: {msg}")

    def keys(self, obj: dict[str, Any], allowed: dict[str, Any], required: tuple[str, ...], key: str) -> None:
        for k in obj:
            if not isinstance(k, str) or k not in allowed:
                close = difflib.get_close_matches(str(k), list(allowed), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.fail(f"{key}{k}" if key else str(k),
                                f"unknown key{hint} (allowed: {', '.join(sorted(allowed))})")
        for k in required:
            if k not in obj:
                raise self.fail(f"{key}{k}", "missing required key")
        for k, typ in allowed.items():
            if k in obj and not _is(obj[k], typ):
                raise self.fail(f"{key}{k}", f"expected {_tname(typ)}, got {type(obj[k]).__name__} {obj[k]!r}")


def _is(value: Any, typ: Any) -> bool:
    types = typ if isinstance(typ, tuple) else (typ,)
    if isinstance(value, bool) and bool not in types:
        return False  # YAML `yes` must not pass as an int
    return isinstance(value, types)


def _tname(typ: Any) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", int: "an integer", float: "a number"}
    types = typ if isinstance(typ, tuple) else (typ,)
    return " or ".join(names.get(t, t.__name__) for t in types)


def _unknown(kind: str, name: str, known: list[str], context: str = "") -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} {name!r}{context}{hint} (known: {', '.join(sorted(known))})"


def _str_list(v: _V, items: list[Any], key: str, what: str) -> tuple[str, ...]:
    if not items:
        raise v.fail(key, f"expected a non-empty list of {what}")
    seen: set[str] = set()
    for i, x in enumerate(items):
        if not isinstance(x, str) or not x.strip():
            raise v.fail(f"{key}[{i}]", f"expected a {what[:-1] if what.endswith('s') else what} name (string), got {x!r}")
        if x in seen:
            raise v.fail(f"{key}[{i}]", f"duplicate {x!r}")
        seen.add(x)
    return tuple(items)


def _seed_list(v: _V, items: list[Any], key: str) -> list[int]:
    if not items:
        raise v.fail(key, "expected a non-empty list of integer seeds")
    seen: set[int] = set()
    for i, s in enumerate(items):
        if not _is(s, int):
            raise v.fail(f"{key}[{i}]", f"expected an integer seed, got {s!r}")
        if not 0 <= s < SEED_MAX:
            raise v.fail(f"{key}[{i}]", f"seed {s} out of range; expected 0 <= seed < 2**32")
        if s in seen:
            raise v.fail(f"{key}[{i}]", f"duplicate seed {s}")
        seen.add(s)
    return list(items)


def _dataset(v: _V, raw: Any, key: str) -> DatasetSpec:
    if isinstance(raw, str):
        raw = {"name": raw}
    v.keys(raw, _DATASET_KEYS, ("name",), f"{key}.")
    name = raw["name"]
    if name == "quickstart":
        if "data_dir" in raw:
            raise v.fail(f"{key}.data_dir", "a quickstart dataset is generated; give `world: {seed, preset}` instead")
        world = raw.get("world")
        if world is None:
            raise v.fail(f"{key}.world", "missing required key (quickstart needs `world: {seed: 0, preset: default}`)")
        v.keys(world, _WORLD_KEYS, ("seed", "preset"), f"{key}.world.")
        if not 0 <= world["seed"] < SEED_MAX:
            raise v.fail(f"{key}.world.seed", f"seed {world['seed']} out of range; expected 0 <= seed < 2**32")
        _check_preset(v, world["preset"], f"{key}.world.preset")
        return DatasetSpec(name=name, world=dict(world), label=raw.get("label"))
    if "world" in raw:
        raise v.fail(f"{key}.world", f"only the quickstart dataset takes `world`; {name!r} needs `data_dir`")
    return DatasetSpec(name=name, data_dir=raw.get("data_dir", f"data/{name}"), label=raw.get("label"))


def _check_preset(v: _V, preset: str, key: str) -> None:
    try:
        from maccap.world.config import WorldConfig
    except ImportError:
        return
    presets = tuple(getattr(WorldConfig, "PRESETS", ()))
    if presets and preset not in presets:
        raise v.fail(key, _unknown("world preset", preset, list(presets)))


def _known_tasks() -> dict[str, Any]:
    from benchmark.tasks import load_tasks

    reg = load_tasks()
    return {n: reg.get(n) for n in reg.names()}


def _global_methods() -> list[str] | None:
    try:
        from maccap.methods import METHODS
    except ImportError:
        return None
    return METHODS.names()


def _check_task(v: _V, task: str, key: str, tasks: dict[str, Any]) -> None:
    if task in tasks:
        return
    if task in EXPECTED_TASKS:
        log.warning("%s: %s: task %r is not available yet (its module is missing); its runs will fail", v.where, key, task)
        return
    raise v.fail(key, _unknown("task", task, sorted(set(tasks) | set(EXPECTED_TASKS))))


def _check_methods(v: _V, task: str, methods: tuple[str, ...], key: str, fn: Any) -> None:
    allowed = getattr(fn, "methods", None) if fn is not None else None
    if allowed is None:
        allowed = TASK_METHODS.get(task)
    if allowed == "registry":
        allowed = _global_methods()
    if allowed is None:
        return
    allowed = list(allowed)
    for i, m in enumerate(methods):
        if m not in allowed:
            raise v.fail(f"{key}[{i}]", _unknown("method", m, allowed, f" for task {task!r}"))


def _check_backbones(v: _V, names: tuple[str, ...], key: str) -> None:
    try:
        from maccap.backbones import BACKBONES
    except ImportError:
        return
    known = BACKBONES.names()
    for i, b in enumerate(names):
        if "@" in b:
            arch, path = b.split("@", 1)
            if not arch or not path:
                raise v.fail(f"{key}[{i}]", f"backbone {b!r}: expected ARCH@/path/to/weights")
        elif "/" in b:
            arch, tag = b.split("/", 1)
            if not arch or not tag:
                raise v.fail(f"{key}[{i}]", f"backbone {b!r}: expected ARCH/TAG such as ViT-B-32/openai")
        elif b not in known:
            raise v.fail(f"{key}[{i}]", _unknown("backbone", b, known) + "; or use ARCH/TAG or ARCH@FILE")


def parse_suite(raw: Any, where: str, check_registries: bool = True, path: Path | None = None) -> Suite:
    """Turn the YAML object into a Suite, or raise a UserError naming the file and key."""
    v = _V(where)
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a mapping at the top level, got {type(raw).__name__}")
    raw = {k: val for k, val in raw.items() if not (isinstance(k, str) and k.startswith("x-"))}  # YAML anchor holders
    v.keys(raw, _TOP_KEYS, _TOP_REQUIRED, "")
    name = raw["name"]
    if not _NAME_RE.match(name):
        raise v.fail("name", f"{name!r}: use letters, digits, '.', '_' or '-'")
    dataset = _dataset(v, raw["dataset"], "dataset")
    backbones = _str_list(v, raw["backbones"], "backbones", "backbones")
    seeds = _seed_list(v, raw["seeds"], "seeds")
    eval_seeds = _seed_list(v, raw["eval_seeds"], "eval_seeds")
    if len(eval_seeds) != len(seeds):
        raise v.fail("eval_seeds", f"has {len(eval_seeds)} seeds but `seeds` has {len(seeds)}; they are paired position by position")
    device = raw.get("device", "cpu")
    if not re.match(r"^(cpu|auto|cuda(:\d+)?|mps)$", device):
        raise v.fail("device", f"{device!r}: expected cpu, auto, cuda, cuda:N or mps")
    tasks_known = _known_tasks() if check_registries else {}
    if not raw["tasks"]:
        raise v.fail("tasks", "expected a non-empty list of task entries")
    entries: list[TaskSpec] = []
    names: set[str] = set()
    for i, t in enumerate(raw["tasks"]):
        key = f"tasks[{i}]"
        if not isinstance(t, dict):
            raise v.fail(key, f"expected a mapping with `task` and `params`, got {t!r}")
        v.keys(t, _TASK_KEYS, ("task",), f"{key}.")
        entries.append(_entry(v, t, key, dataset, backbones, seeds, tasks_known, check_registries))
        if entries[-1].name in names:
            raise v.fail(f"{key}.name", f"duplicate task entry name {entries[-1].name!r}; give each entry a unique `name`")
        names.add(entries[-1].name)
    pairs = tuple(SeedPair(s, e) for s, e in zip(seeds, eval_seeds))
    return Suite(name=name, version=raw["version"], dataset=dataset, backbones=backbones, seeds=pairs,
                 tasks=tuple(entries), description=raw.get("description", ""), device=device, path=path)


def _entry(v: _V, t: dict[str, Any], key: str, dataset: DatasetSpec, backbones: tuple[str, ...],
           suite_seeds: list[int], tasks_known: dict[str, Any], check: bool) -> TaskSpec:
    task = t["task"]
    name = t.get("name", task)
    if not _NAME_RE.match(name):
        raise v.fail(f"{key}.name", f"{name!r}: use letters, digits, '.', '_' or '-'")
    methods = _str_list(v, t["methods"], f"{key}.methods", "methods") if "methods" in t else (DEFAULT_METHOD,)
    bbs = _str_list(v, t["backbones"], f"{key}.backbones", "backbones") if "backbones" in t else backbones
    if check:
        _check_task(v, task, f"{key}.task", tasks_known)
        _check_methods(v, task, methods, f"{key}.methods", tasks_known.get(task))
        if not getattr(tasks_known.get(task), "accepts_any_backbone", False):
            _check_backbones(v, bbs, f"{key}.backbones" if "backbones" in t else "backbones")
    mp = t.get("method_params", {})
    for m, over in mp.items():
        if m not in methods:
            raise v.fail(f"{key}.method_params.{m}", f"not one of this entry's methods ({', '.join(methods)})")
        if not isinstance(over, dict):
            raise v.fail(f"{key}.method_params.{m}", f"expected a mapping, got {type(over).__name__}")
    ds = _dataset(v, t["dataset"], f"{key}.dataset") if "dataset" in t else dataset
    seeds = None
    if "seeds" in t:
        seeds = tuple(_seed_list(v, t["seeds"], f"{key}.seeds"))
        for i, s in enumerate(seeds):
            if s not in suite_seeds:
                raise v.fail(f"{key}.seeds[{i}]", f"seed {s} is not one of the suite's seeds ({suite_seeds})")
    return TaskSpec(name=name, task=task, methods=methods, backbones=bbs, dataset=ds,
                    params=copy.deepcopy(t.get("params", {})), method_params=copy.deepcopy(mp), seeds=seeds)

