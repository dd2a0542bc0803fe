"""What a timing depends on: cores, threads, CPU, versions (no hsftrain import, so that
benchmarks can measure older checkouts too)."""

from __future__ import annotations

import json
import os
import platform
import resource
from pathlib import Path

import torch

#: CPU flags that change which precision trains fastest (bf16 needs one of them)
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")


def cpu_model() -> tuple[str | None, list[str]]:
    """The CPU's model name and its :data:`BF16_FLAGS` (Linux ``/proc/cpuinfo``; None and
    [] elsewhere). Benchmarks ran on different CPUs (an Intel Xeon with AMX, an AMD EPYC
    without): the same script's timings differ by 30-50% between them."""
    try:
        text = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return None, []
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in text.splitlines())
    )
    flags = fields.get("flags", "").split()
    return fields.get("model name"), [f for f in BF16_FLAGS if f in flags]


def machine_info() -> dict:
    """Cores, torch threads, CPU model and bf16 flags, Python and torch versions, GPU when
    one is used."""
    model, flags = cpu_model()
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": model,
        "cpu_bf16_flags": flags,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (beside a wall time)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_slug() -> str:
    """Short name of this machine for result folders, e.g. ``epyc-2core`` or ``xeon-2core``."""
    model, _ = cpu_model()
    words = (model or platform.machine() or "cpu").lower().replace("(r)", " ").split()
    family = next((w for w in words if w in ("epyc", "xeon", "ryzen", "core", "neoverse")), "cpu")
    if torch.cuda.is_available():
        family = torch.cuda.get_device_name(0).lower().replace("nvidia", "").split()[0]
        return f"{family}-gpu"
    return f"{family}-{os.cpu_count()}core"


def write_result(name: str, tag: str, out: dict) -> Path:
    """``out`` as ``benchmarks/results/<name>/<machine>/<tag or name>.json``; returns the path.

    Results are stored by benchmark and machine (:func:`machine_slug`), never by run."""
    path = (
        Path(__file__).resolve().parent / "results" / name / machine_slug() / f"{tag or name}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    return path
