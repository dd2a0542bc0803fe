"""A run's directory and its record: where it trains (a new run, or the one resumed), the
split of a new run, what it writes for itself to be reproduced or resumed (``split.json``,
``config.yaml``, ``plan.yaml``), and what a refused new run leaves (nothing)."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hsftrain.core.atomic import write_text_atomic
from hsftrain.data.splits import Split, SplitSettings, make_split
from hsftrain.data.subjects import Discovery
from hsftrain.training.distributed import is_rank_zero

log = logging.getLogger(__name__)


def resolve_run_dir(cfg: DictConfig) -> tuple[Path, Path | None]:
    """Run directory and the checkpoint to resume from (if ``resume`` is set).

    Raises:
        FileNotFoundError: ``resume`` names nothing usable.
    """
    if cfg.get("resume"):
        target = Path(str(cfg.resume)).expanduser()
        if target.is_dir():
            ckpt = target / "checkpoints" / "last.ckpt"
            if not ckpt.is_file():
                raise FileNotFoundError(f"resume={target}: no checkpoints/last.ckpt in it")
            return target, ckpt
        if target.is_file():
            return target.parent.parent, target
        raise FileNotFoundError(f"resume={target}: no such checkpoint file or run directory")
    name = cfg.get("run_name") or time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(str(cfg.datasets.output_path)).expanduser() / str(name)
    if (run_dir / "checkpoints").exists() and is_rank_zero():
        raise FileExistsError(
            f"{run_dir} already holds a run: choose another run_name, or continue it with "
            f"resume={run_dir}"
        )
    return run_dir, None


def first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` (``path`` included) that does not exist yet."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def remove_refused(run_dir: Path, created: Path) -> None:
    """Remove the run directory a refused run created, then the folders above it up to
    ``created`` that it left empty. A directory holding a checkpoint is kept."""
    if any((run_dir / "checkpoints").glob("*.ckpt")):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    for folder in run_dir.parents:
        if folder != created and created not in folder.parents:
            break
        try:
            folder.rmdir()  # only when empty
        except OSError:
            break
        if folder == created:
            break
    log.info("refused before training: removed the run directory %s it had created", run_dir)


def configured_split(cfg: DictConfig, found: Discovery) -> Split:
    """The split of a new run: ``split_file``'s, else a new one from ``datasets.*``."""
    ids = [s.id for s in found.subjects]
    if cfg.get("split_file"):
        return Split.load(str(cfg.split_file), ids)
    d = cfg.datasets
    how = SplitSettings(
        float(d.train_ratio),
        bool(d.replace),
        d.get("k_sample"),
        bool(d.train_on_all),
        int(cfg.seed),
    )
    return make_split(len(ids), how, d.get("train_val_test_idx"), groups=found.groups)


@dataclass
class RunRecord:
    """Writes a run's record: ``split.json``, ``config.yaml`` (and ``plan.yaml``). Its
    methods are what callbacks call, so it is picklable: ``ddp_spawn`` sends the callbacks
    to the processes that train (a local function could not go)."""

    run_dir: Path
    split: Split
    ids: list[str]
    cfg: DictConfig
    plan: Any = None

    def write(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.split.save(self.run_dir / "split.json", self.ids, int(self.cfg.seed))
        self.write_config()

    def write_config(self) -> None:
        write_text_atomic(self.run_dir / "config.yaml", OmegaConf.to_yaml(self.cfg, resolve=True))
        if self.plan is not None:
            self.plan.save(self.run_dir / "plan.yaml")

    def paced(self, epochs: int) -> None:
        """The budget changed the number of epochs (the split does not change)."""
        OmegaConf.update(self.cfg, "lightning.max_epochs", epochs)
        if is_rank_zero():
            self.write_config()


def resume_command(run_dir: Path, finetune: bool) -> str:
    """The command that continues the run in ``run_dir``."""
    return f"hsftrain {'finetune' if finetune else 'train'} resume={run_dir}"
