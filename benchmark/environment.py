"""The software and hardware a run depends on."""

from __future__ import annotations

import os
import shutil
import subprocess

from benchmark.store import library_versions


def java_version() -> str | None:
    java = shutil.which("java")
    if java is None:
        return None
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return f"{java} (did not answer)"
    first = (out.stderr or out.stdout).strip().splitlines()
    return first[0] if first else java


def describe_environment() -> dict[str, str]:
    import torch

    env: dict[str, str] = {k: str(v) for k, v in library_versions().items() if k != "java"}
    env["java"] = java_version() or "not found (METEOR, SPICE and PTB tokenisation fall back or are skipped)"
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        env["device"] = f"cuda ({torch.cuda.device_count()}: {names})"
    else:
        env["device"] = f"cpu ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})"
    return env
