"""Safe loading audit: no code path of the packages can run pickled code from a user's file.

Checkpoints load through safetensors or torch.load(weights_only=True); YAML through safe_load (or
yaml.load with a SafeLoader); pickle, numpy's allow_pickle, pandas' read_pickle, joblib and dill are
not used at all. The check parses every source file of maccap/, analysis/ and benchmark/, so a
regression fails here; the first test proves the checker catches each pattern.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("maccap", "analysis", "benchmark")
BANNED_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "shelve", "marshal"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_calls(source: str, where: str = "<src>") -> list[str]:
    """Every unsafe deserialisation pattern in `source`, as 'where:line: what'."""
    found = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            found += [f"{where}:{line}: import {a.name}" for a in node.names if a.name.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom):
            mod = (node.module or "").split(".")[0]
            if mod in BANNED_MODULES:
                found.append(f"{where}:{line}: from {node.module} import ...")
            if mod == "torch" and any(a.name == "load" for a in node.names):
                found.append(f"{where}:{line}: from torch import load (call torch.load(..., weights_only=True))")
            if mod == "yaml" and any(a.name in ("load", "unsafe_load", "full_load", "Loader", "UnsafeLoader")
                                     for a in node.names):
                found.append(f"{where}:{line}: from yaml import an unsafe loader")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name == "torch.load" and not _is_true(_kw(node, "weights_only")):
                found.append(f"{where}:{line}: torch.load without weights_only=True")
            elif name in ("yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.full_load_all",
                          "yaml.unsafe_load_all"):
                found.append(f"{where}:{line}: {name}")
            elif name == "yaml.load":
                loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
                if loader is None or _dotted(loader).split(".")[-1] not in SAFE_YAML_LOADERS:
                    found.append(f"{where}:{line}: yaml.load without a SafeLoader")
            elif name.split(".")[-1] == "load" and name.split(".")[0] in ("np", "numpy") and _is_true(
                    _kw(node, "allow_pickle")):
                found.append(f"{where}:{line}: {name}(allow_pickle=True)")
            elif name.split(".")[-1] == "read_pickle":
                found.append(f"{where}:{line}: {name}")
    return found


@pytest.mark.parametrize("snippet", [
    "import torch\ntorch.load('x.pt')",
    "import torch\ntorch.load('x.pt', weights_only=False)",
    "import torch\ntorch.load(\n    'x.pt',\n    map_location='cpu',\n)",
    "from torch import load",
    "import pickle",
    "from pickle import loads",
    "import yaml\nyaml.load(open('s.yaml'))",
    "import yaml\nyaml.load(text, Loader=yaml.Loader)",
    "import yaml\nyaml.unsafe_load(text)",
    "import yaml\nyaml.full_load(text)",
    "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
    "import pandas as pd\npd.read_pickle('a.pkl')",
    "import joblib",
])
def test_checker_catches_unsafe_patterns(snippet: str) -> None:
    assert unsafe_calls(snippet)


@pytest.mark.parametrize("snippet", [
    "import torch\ntorch.load('x.pt', map_location='cpu', weights_only=True)",
    "import yaml\nyaml.safe_load(text)",
    "import yaml\nyaml.load(text, Loader=yaml.SafeLoader)",
    "import numpy as np\nnp.load('a.npy')",
    "from safetensors.torch import load_file\nload_file('w.safetensors')",
])
def test_checker_accepts_safe_patterns(snippet: str) -> None:
    assert unsafe_calls(snippet) == []


def test_package_sources_load_nothing_unsafely() -> None:
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert len(files) > 50  # the packages are really there
    found = [f for p in files for f in unsafe_calls(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]
    assert not found, "\n".join(found)
