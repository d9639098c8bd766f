"""Where each kind of registered name lives, for `ls` and for validating suites."""

from __future__ import annotations

from typing import Callable


def backbones() -> list[str]:
    from maccap.backbones import BACKBONES

    return BACKBONES.names()


def tasks() -> list[str]:
    from benchmark.tasks import load_tasks

    return load_tasks().names()


def methods() -> list[str]:
    from maccap.methods import METHODS

    return METHODS.names()


def metrics() -> list[str]:
    from maccap.metrics import METRICS

    return METRICS.names()


def suites() -> list[str]:
    from benchmark.suite import list_suites

    return list_suites()


CATALOG: dict[str, Callable[[], list[str]]] = {
    "backbones": backbones, "tasks": tasks, "methods": methods, "metrics": metrics, "suites": suites,
}
