"""Task registry: a task turns a RunContext into a TaskOutput. Modules below register themselves."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from benchmark.store import RunKey, TaskOutput
from maccap.registry import Registry


@dataclass
class RunContext:
    key: RunKey
    run_dir: Path  # this run's directory: extra files (figures, predictions) go here
    work_dir: Path  # shared artefacts across runs: world, feature caches, checkpoints
    data_dir: Path  # the dataset directory (quickstart world or prepared real data)
    dataset: str  # dataset name as the suite gives it ("quickstart", "coco", ...)
    params: dict[str, Any] = field(default_factory=dict)  # resolved task parameters from the suite
    train_seed: int = 0
    eval_seed: int = 0
    device: str = "cpu"
    progress: bool = True


TaskFn = Callable[[RunContext], TaskOutput]
TASKS: Registry[TaskFn] = Registry("task")

# (dataset, method, backbone, train seed, params) -> keys of the cached artefacts a run may build and other
# runs reuse (an LM, a captioner). Only scheduling reads them: runs sharing a key that is being built
# are not started beside it, where they would wait on its file lock (benchmark.runner).
ArtefactFn = Callable[[str, str, str, int, dict[str, Any]], set[str]]
ARTEFACTS: Registry[ArtefactFn] = Registry("artefact declaration")

# Each module registers its tasks on import; a missing optional module is not an error here.
_TASK_MODULES = ("clip", "gap", "caption", "vqa", "dummy")


def load_tasks() -> Registry[TaskFn]:
    for name in _TASK_MODULES:
        try:
            importlib.import_module(f"benchmark.tasks.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"benchmark.tasks.{name}":
                raise
    return TASKS


def shared_artefacts(task: str, dataset: str, method: str, backbone: str, train_seed: int,
                     params: dict[str, Any]) -> set[str]:
    """The task's declared artefact keys for one run (none when the task declares none)."""
    load_tasks()
    return ARTEFACTS.get(task)(dataset, method, backbone, train_seed, params) if task in ARTEFACTS else set()
