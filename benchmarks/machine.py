"""What a timing depends on: cores, threads, CPU, versions (no hsftrain import, so that
benchmarks can measure older checkouts too)."""

from __future__ import annotations

import os
import platform

import torch


def machine_info() -> dict:
    """Cores, torch threads, processor, Python and torch versions, GPU when one is used."""
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
