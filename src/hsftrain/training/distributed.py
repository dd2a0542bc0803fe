"""Several processes, one run: which process writes, and the name they share.

Multi-GPU and multi-node training is Lightning's DDP (``lightning=ddp``), launched by
Lightning itself on one machine, or by ``srun``/``torchrun`` on a cluster. Every process
builds the same run (same split, same seed); only global rank 0 writes the run directory's
record (``config.yaml``, ``split.json``, ``metrics.json``, ``model.onnx``).
"""

from __future__ import annotations

import os

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only

#: Set by the first process for the processes Lightning launches after it.
RUN_NAME_ENV = "HSFTRAIN_RUN_NAME"
#: Job identifiers shared by every process of a cluster launch.
JOB_ENVS = ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID")


def global_rank() -> int:
    """This process's global rank (0 when not distributed), from the launcher's environment."""
    return int(getattr(rank_zero_only, "rank", 0) or 0)


def is_rank_zero() -> bool:
    return global_rank() == 0


def shared_run_name() -> str | None:
    """A run name every process of one launch agrees on, when the launcher provides one."""
    if os.environ.get(RUN_NAME_ENV):
        return os.environ[RUN_NAME_ENV]
    for key in JOB_ENVS:
        if os.environ.get(key) and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            return f"job-{os.environ[key]}"
    return None


def publish_run_name(name: str) -> None:
    """Let processes launched later (Lightning's DDP launcher) use the same run name."""
    os.environ[RUN_NAME_ENV] = name


def compile_enabled(setting: object, accelerator: object) -> bool:
    """``models.compile``: ``auto`` compiles when training on a CUDA device."""
    value = str(setting).lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", "none"):
        return False
    return torch.cuda.is_available() and str(accelerator) in ("auto", "gpu", "cuda")
