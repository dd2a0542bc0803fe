"""nnU-Net v2 beside hsftrain: the same split, the same wall-time budget, the same scoring.

What it measures: how far nnU-Net v2, the reference self-configuring
segmentation framework, gets on this machine's CPU in the wall-time budget that
``benchmarks/train_heldout.py --tag budget30m budget=30m`` gave hsftrain, on exactly the
same cases:

* the split of ``train_heldout.py`` (its ``split()``, seed 0): its 145 training and 21
  validation cases (everything hsftrain trains and selects on) are nnU-Net's training set,
  trained as fold ``all``; the 42 test cases are predicted and scored;
* ``nnUNetv2_plan_and_preprocess`` and ``nnUNetv2_train`` (3d_fullres, ``-device cpu``)
  run against the budget: planning + preprocessing, a short timing probe and the training
  (including the validation nnU-Net runs at its end) must fit in ``--budget``. The
  trainer is nnU-Net's own training-length variant (``nnUNetTrainer_1epoch``,
  ``_5epochs``, ... ``nnUNetTrainer`` = 1000 epochs): the longest one whose projected
  time fits what is left after planning and the probe. The probe times real training
  steps, validation steps and the sliding-window prediction of nnU-Net's end-of-training
  validation. The budget is enforced by killing the training at the deadline; a run
  without a checkpoint by then is reported as "no model within budget" (Dice 0), never
  estimated;
* ``nnUNetv2_predict`` on the 42 test cases (timed apart, not in the budget), scored with
  ``hsftrain evaluate``: Dice and HD95 per label (1 anterior, 2 posterior).

nnU-Net v2 lives in its own virtual environment, ``benchmarks/peer_nnunet/.venv``
(created on the first run with one pinned pip command, skipped once it works), and
works in ``benchmarks/peer_nnunet/work`` (``--work``); both are ignored by git. Its
console scripts run through a small launcher that lets the CUDA-only torchvision wheel
import beside CPU torch (see ``STUB_CODE``); nnU-Net itself is unchanged.

This is a benchmark, not a test: run it alone, on an idle machine::

    python benchmarks/peer_nnunet.py --budget 30m
    python benchmarks/peer_nnunet.py --budget 2h --trainer nnUNetTrainer_50epochs  # no probe
    python benchmarks/peer_nnunet.py --smoke      # the whole pipeline in a few minutes

Prints a side-by-side table (the hsftrain row from
``benchmarks/results/train_heldout_<--hsftrain-tag>.json``) and writes
``benchmarks/results/peer_nnunet.json`` (``peer_nnunet_smoke.json`` with ``--smoke``).
``--smoke`` trains 8 cases with a 2-iteration trainer written only for it and predicts 2
test cases: it checks the script, its numbers mean nothing.

Data: MSD Task04 Hippocampus, CC-BY-SA 4.0 (Simpson et al., arXiv:1902.09063; Antonelli
et al., Nature Communications 13, 4128, 2022).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from machine import machine_info  # benchmarks/ is on sys.path when run as a script
from rich.console import Console
from rich.table import Table
from train_heldout import MSD, split

from hsftrain.training.validate import parse_budget

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / "benchmarks" / "peer_nnunet"
VENV = HOME / ".venv"
RESULTS = ROOT / "benchmarks" / "results"
#: One pip command. torchvision 0.28 is the release built against torch 2.13; the only
#: 0.28.0 wheel pip can see here is a CUDA build whose ops do not load beside CPU torch
#: (``import torchvision`` fails), but nnU-Net's 3d_fullres path never imports it (only
#: timm-based architectures do). Unpinned, the resolver would move torch instead.
PINS = ("nnunetv2==2.8.1", "torch==2.13.0", "torchvision==0.28.0")
STAMP = VENV / "hsftrain-peer-stamp.json"
DATASET_ID = 4
DATASET = f"Dataset{DATASET_ID:03d}_Hippocampus"
CONFIG = "3d_fullres"
LABELS = {1: "anterior", 2: "posterior"}
#: nnU-Net's training-length variants (training/nnUNetTrainer/variants/training_length)
#: up to its default trainer, as (epochs, class name).
VARIANTS = (
    (1, "nnUNetTrainer_1epoch"),
    (5, "nnUNetTrainer_5epochs"),
    (10, "nnUNetTrainer_10epochs"),
    (20, "nnUNetTrainer_20epochs"),
    (50, "nnUNetTrainer_50epochs"),
    (100, "nnUNetTrainer_100epochs"),
    (250, "nnUNetTrainer_250epochs"),
    (500, "nnUNetTrainer_500epochs"),
    (750, "nnUNetTrainer_750epochs"),
    (1000, "nnUNetTrainer"),
)
ITERATIONS, VAL_ITERATIONS = 250, 50  # nnUNetTrainer's steps per epoch (train, val)
#: Per epoch beyond the steps: checkpoint_best (most epochs early on), progress plot.
EPOCH_OVERHEAD_S = 3.0
#: End of training: checkpoint_final, export pool start-up, the last exports.
END_OVERHEAD_S = 20.0
#: Projections are multiplied by this before comparing with the time left.
SAFETY = 1.1
SMOKE_TRAINER = "nnUNetTrainer_hsftrainSmoke"
SMOKE_TRAINER_CODE = f'''"""Written by benchmarks/peer_nnunet.py --smoke: 1 epoch of 2 + 1 iterations."""

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class {SMOKE_TRAINER}(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_iterations_per_epoch = 2
        self.num_val_iterations_per_epoch = 1
        self.num_epochs = 1
'''
#: Prepended to everything run in the nnU-Net venv. nnU-Net finds a trainer by importing
#: every module under nnunetv2/training/nnUNetTrainer, Primus among them -> timm ->
#: torchvision, whose CUDA-only 0.28.0 wheel (the only one for torch 2.13 here) cannot load
#: its C++ ops beside CPU torch, and ``import torchvision`` then fails registering fake
#: kernels for ``torchvision::nms`` / ``qnms``. Declaring those two schemas (no kernels)
#: lets the import through; nnU-Net's U-Net never calls a torchvision op. With a
#: torchvision whose ops load, nothing is declared.
STUB_CODE = """
import importlib.util as _util
from pathlib import Path as _Path

import torch as _torch

_spec = _util.find_spec("torchvision")
if _spec is not None and _spec.submodule_search_locations:
    try:
        _torch.ops.load_library(str(_Path(_spec.submodule_search_locations[0]) / "_C.so"))
    except OSError:
        _stub = _torch.library.Library("torchvision", "FRAGMENT")
        for _op in ("nms", "qnms"):
            _stub.define(f"{_op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
"""
#: ``python launch.py nnUNetv2_train ARGS``: that console script, after STUB_CODE.
LAUNCH_CODE = (
    STUB_CODE
    + """
if __name__ == "__main__":
    import sys
    from importlib.metadata import entry_points

    (entry,) = entry_points(group="console_scripts", name=sys.argv[1])
    sys.argv = sys.argv[1:]
    sys.exit(entry.load()())
"""
)
#: Times nnU-Net's own training and validation steps and the sliding-window prediction of
#: its end-of-training validation, for one trainer.
PROBE_CODE = (
    STUB_CODE
    + """
import json, os, sys, time
t_start = float(sys.argv[2])
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.run.run_training import get_trainer_from_args

args = json.loads(sys.argv[1])
torch.set_num_threads(os.cpu_count())  # what nnUNetv2_train -device cpu does
t0 = time.time()
trainer = get_trainer_from_args(str(args["dataset"]), args["config"], "all", args["trainer"],
                                device=torch.device("cpu"))
trainer.on_train_start()
t1 = time.time()


def timed(step, loader, warmup, at_least, at_most, seconds):
    for _ in range(warmup):
        step(next(loader))
    times = []
    begin = time.perf_counter()
    while len(times) < at_most and (len(times) < at_least or time.perf_counter() - begin < seconds):
        t = time.perf_counter()
        step(next(loader))
        times.append(time.perf_counter() - t)
    return times


trainer.on_epoch_start()
trainer.on_train_epoch_start()
train = timed(trainer.train_step, trainer.dataloader_train, args["warmup"], args["min_steps"],
              args["max_steps"], args["train_s"])
with torch.no_grad():
    trainer.on_validation_epoch_start()
    val = timed(trainer.validation_step, trainer.dataloader_val, 1, args["val_steps"],
                args["val_steps"], 0.0)
    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=True, device=trainer.device,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(trainer.network, trainer.plans_manager,
                                    trainer.configuration_manager, None, trainer.dataset_json,
                                    trainer.__class__.__name__,
                                    trainer.inference_allowed_mirroring_axes)
    _, keys = trainer.do_split()
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, keys[: args["cases"]])
    cases = []
    for key in dataset.identifiers:
        data = torch.from_numpy(dataset.load_case(key)[0][:])
        t = time.perf_counter()
        predictor.predict_sliding_window_return_logits(data)
        cases.append(time.perf_counter() - t)
for loader in (trainer.dataloader_train, trainer.dataloader_val):
    finish = getattr(loader, "_finish", None)
    if finish is not None:
        finish()
print("PROBE " + json.dumps({
    "import_s": t0 - t_start, "init_s": t1 - t0, "train_step_s": train, "val_step_s": val,
    "case_predict_s": cases, "n_validation_cases": len(keys), "batch_size": trainer.batch_size,
    "patch_size": list(trainer.configuration_manager.patch_size),
    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
}), flush=True)
"""
)


def child_cpu() -> float:
    """CPU seconds of the finished (waited-for) children of this process, theirs included."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


def run(
    cmd: list[str], log: Path, env: dict[str, str], timeout: float | None = None
) -> dict[str, Any]:
    """Run ``cmd`` with its output in ``log``; past ``timeout`` seconds its whole process
    group (data-augmentation workers too) is terminated, then killed."""
    log.parent.mkdir(parents=True, exist_ok=True)
    cpu0, start = child_cpu(), time.perf_counter()
    with log.open("w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        timed_out = False
        try:
            proc.wait(timeout=None if timeout is None else max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, None)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            proc.wait()
    return {
        "cmd": cmd,
        "rc": proc.returncode,
        "timed_out": timed_out,
        "wall_s": round(time.perf_counter() - start, 1),
        "cpu_s": round(child_cpu() - cpu0, 1),
        "log": str(log),
    }


def check(step: dict[str, Any], what: str) -> None:
    if step["rc"] != 0 and not step["timed_out"]:
        tail = Path(step["log"]).read_text().splitlines()[-25:]
        sys.exit(f"{what} failed (exit {step['rc']}), see {step['log']}:\n" + "\n".join(tail))


def ensure_venv(env: dict[str, str]) -> dict[str, Any]:
    """nnU-Net v2 in its own venv: one pinned pip command, skipped when the stamp matches
    and nnU-Net's training and inference modules import with the pinned torch."""
    python = VENV / "bin" / "python"
    probe = STUB_CODE + (
        "import torch, torchvision\n"
        "from importlib.metadata import version\n"
        "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name\n"
        "assert torch.__version__.split('+')[0] == '2.13.0', torch.__version__\n"
        "recursive_find_trainer_class_by_name('nnUNetTrainer_1epoch')\n"
        "ops = 'loaded' if torchvision.extension._has_ops() else 'stubbed'\n"
        "print(version('nnunetv2'), torch.__version__, 'torchvision', version('torchvision'), ops)"
    )

    def works() -> str | None:
        if not python.is_file():
            return None
        done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, env=env)
        return done.stdout.strip() if done.returncode == 0 else None

    if STAMP.is_file() and json.loads(STAMP.read_text()).get("pins") == list(PINS):
        versions = works()
        if versions:
            return {"installed_now": False, "versions": versions, "pins": list(PINS)}
    print(f"installing nnU-Net v2 into {VENV} ...", flush=True)
    subprocess.run(["python3.11", "-m", "venv", "--clear", str(VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *PINS]
    subprocess.run(pip, check=True, env=env)
    versions = works()
    if not versions:
        sys.exit(f"nnU-Net v2 does not import in {VENV} after {' '.join(pip)}")
    STAMP.write_text(json.dumps({"pins": list(PINS), "versions": versions}))
    return {"installed_now": True, "versions": versions, "pins": list(PINS), "pip": pip}


def convert(work: Path, train: list[Path], test: list[Path]) -> None:
    """nnU-Net raw dataset from the training cases; test images and labels beside it."""
    raw = work / "nnUNet_raw" / DATASET
    images, labels = raw / "imagesTr", raw / "labelsTr"
    test_images, test_labels = work / "test_images", work / "test_labels"
    for folder in (images, labels, test_images, test_labels):
        folder.mkdir(parents=True)
    for cases, image_dir, label_dir in ((train, images, labels), (test, test_images, test_labels)):
        for image in cases:
            case = image.name.removesuffix(".nii.gz")
            shutil.copyfile(image, image_dir / f"{case}_0000.nii.gz")
            shutil.copyfile(MSD / "labelsTr" / image.name, label_dir / image.name)
    dataset = {
        "name": "Hippocampus",
        "description": "MSD Task04 Hippocampus: the train+validation cases of "
        "benchmarks/train_heldout.py split() (seed 0)",
        "reference": "Vanderbilt University Medical Center; Simpson et al. arXiv:1902.09063",
        "licence": "CC-BY-SA 4.0",
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, **{name: value for value, name in LABELS.items()}},
        "numTraining": len(train),
        "file_ending": ".nii.gz",
    }
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=1))


def projected_s(epochs: int, probe: dict[str, Any], iterations: int = ITERATIONS) -> float:
    """Seconds ``nnUNetv2_train`` needs for ``epochs`` epochs, from the probe's timings:
    start-up, the epochs (train and validation steps), the end-of-training validation
    (a sliding-window prediction of every training case, fold ``all``)."""
    step = sum(probe["train_step_s"]) / len(probe["train_step_s"])
    val = sum(probe["val_step_s"]) / len(probe["val_step_s"])
    case = sum(probe["case_predict_s"]) / len(probe["case_predict_s"])
    epoch = iterations * step + VAL_ITERATIONS * val + EPOCH_OVERHEAD_S
    final = probe["n_validation_cases"] * case + END_OVERHEAD_S
    return float(probe["import_s"] + probe["init_s"] + epochs * epoch + final)


def choose(probe: dict[str, Any], left_s: float) -> tuple[str, int, dict[str, float]]:
    """The longest variant whose projection (x SAFETY) fits ``left_s``; 1 epoch if none."""
    projections = {name: round(projected_s(e, probe), 1) for e, name in VARIANTS}
    fitting = [(e, n) for e, n in VARIANTS if projections[n] * SAFETY <= left_s]
    epochs, name = fitting[-1] if fitting else VARIANTS[0]
    return name, epochs, projections


def epoch_times(results: Path) -> list[float]:
    """The 'Epoch time: X s' lines of nnU-Net's training logs."""
    times: list[float] = []
    for log in sorted(results.rglob("training_log_*.txt")):
        times += [float(x) for x in re.findall(r"Epoch time: ([\d.]+) s", log.read_text())]
    return times


def evaluate(pred: Path, ref: Path, out: Path) -> dict[str, Any]:
    """``hsftrain evaluate`` of the predictions: per-case and mean Dice and HD95 per label."""
    exe = Path(sys.executable).parent / "hsftrain"
    labels = "{" + ",".join(f"{v}:{n}" for v, n in LABELS.items()) + "}"
    cmd = [str(exe if exe.is_file() else shutil.which("hsftrain") or "hsftrain"), "evaluate"]
    cmd += [f"pred={pred}", f"ref={ref}", f"labels={labels}", f"out={out}", "plots=false"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    per_case: dict[str, dict[str, dict[str, float]]] = {}
    with (out / "metrics.csv").open() as f:
        for row in csv.DictReader(f):
            metrics = {"dice": float(row["dice"]), "hd95_mm": float(row["hd95_mm"])}
            per_case.setdefault(row["label_name"], {})[row["subject"]] = metrics
    return {"cmd": cmd, "wall_s": round(time.perf_counter() - start, 1), "per_case": per_case}


def means(per_case: dict[str, dict[str, dict[str, float]]], metric: str) -> dict[str, float]:
    out = {}
    for name in LABELS.values():
        values = [c[metric] for c in per_case.get(name, {}).values() if not math.isnan(c[metric])]
        out[name] = round(sum(values) / len(values), 4) if values else float("nan")
    return out


def hsftrain_row(tag: str) -> dict[str, Any] | None:
    """wall, CPU, Dice (and HD95 when the file has it) of ``train_heldout_<tag>.json``."""
    path = RESULTS / f"train_heldout_{tag}.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    budget = next(
        (o.split("=", 1)[1] for o in data.get("overrides", []) if o.startswith("budget=")), "-"
    )
    return {
        "file": str(path.relative_to(ROOT)),
        "budget": budget,
        "wall_s": data.get("wall_s"),
        "cpu_s": data.get("cpu_s"),
        "dice": data.get("test_dice_mean", {}),
        "hd95": data.get("test_hd95_mean", {}),
    }


def no_nan(value: Any) -> Any:
    """``value`` with every NaN float replaced by None (strict JSON)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [no_nan(v) for v in value]
    return value


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(rows: list[dict[str, Any]], title: str) -> Table:
    out = Table(title=title)
    out.add_column("tool", no_wrap=True)
    columns = ("budget", "wall s", "CPU s", *(f"Dice {n}" for n in LABELS.values()))
    for col in (*columns, *(f"HD95 {n}" for n in LABELS.values())):
        out.add_column(col, justify="right")
    for row in rows:
        dice = [fmt(row["dice"].get(n)) for n in LABELS.values()]
        hd95 = [fmt(row["hd95"].get(n), 2) for n in LABELS.values()]
        wall, cpu = fmt(row["wall_s"], 0), fmt(row["cpu_s"], 0)
        out.add_row(row["tool"], str(row["budget"]), wall, cpu, *dice, *hd95)
    return out


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", default="30m", help="wall time: 30m, 2h, 1h30m, 900s")
    parser.add_argument("--work", type=Path, default=None, help="default: peer_nnunet/work")
    parser.add_argument("--hsftrain-tag", default="budget30m", help="train_heldout_<tag>.json")
    parser.add_argument("--trainer", default=None, help="force a trainer class (no probe)")
    parser.add_argument("--probe-s", type=float, default=45.0, help="timed training steps, s")
    parser.add_argument(
        "--smoke", action="store_true", help="8 + 2 cases, a 2-step trainer (unless --trainer)"
    )
    args = parser.parse_args()
    budget_s = parse_budget(args.budget)
    work = (args.work or HOME / ("work_smoke" if args.smoke else "work")).resolve()
    cpus = os.cpu_count() or 1
    nproc = str(min(2, cpus))

    env = dict(os.environ)
    env.setdefault("PIP_CACHE_DIR", str(ROOT / ".cache" / "pip"))
    env.setdefault("MPLCONFIGDIR", str(ROOT / ".cache" / "matplotlib"))
    env.update(
        nnUNet_raw=str(work / "nnUNet_raw"),
        nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
        nnUNet_results=str(work / "nnUNet_results"),
        nnUNet_n_proc_DA=str(cpus),  # data-augmentation workers during training
        nnUNet_def_n_proc=nproc,  # export pool of the end-of-training validation
        nnUNet_compile="f",  # nnU-Net turns it off on CPU anyway; said explicitly
    )
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    venv = ensure_venv(env)

    images = sorted((MSD / "imagesTr").glob("hippocampus_*.nii.gz"))
    tr, va, te = split(len(images))
    train_idx, test_idx = sorted(tr + va), te
    if args.smoke:
        train_idx, test_idx = sorted(tr[:6] + va[:2]), te[:2]
        (work / "trainers").mkdir(parents=True, exist_ok=True)
        (work / "trainers" / f"{SMOKE_TRAINER}.py").write_text(SMOKE_TRAINER_CODE)
        env["nnUNet_extTrainer"] = str(work / "trainers")
    for sub in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "probe_results"):
        shutil.rmtree(work / sub, ignore_errors=True)  # a fresh run every time
    for sub in ("test_images", "test_labels", "predictions", "evaluation", "logs"):
        shutil.rmtree(work / sub, ignore_errors=True)
    convert(work, [images[i] for i in train_idx], [images[i] for i in test_idx])
    logs = work / "logs"

    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        print(f"warning: load average {load_before:.2f}: the machine is not idle", flush=True)
    start, cpu0 = time.perf_counter(), child_cpu()
    launch = work / "launch.py"  # nnU-Net's console scripts, after STUB_CODE
    launch.write_text(LAUNCH_CODE)
    nnunet_cli = [str(VENV / "bin" / "python"), str(launch)]
    plan_cmd = [*nnunet_cli, "nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", CONFIG]
    plan_cmd += ["--verify_dataset_integrity", "-np", nproc, "-npfp", nproc, "--no_pbar"]
    plan = run(plan_cmd, logs / "plan_and_preprocess.log", env, timeout=budget_s)
    check(plan, "nnUNetv2_plan_and_preprocess")
    if plan["timed_out"]:
        sys.exit(f"nnUNetv2_plan_and_preprocess alone took the whole budget ({budget_s:.0f} s)")

    probe: dict[str, Any] | None = None
    projections: dict[str, float] = {}
    probe_step: dict[str, Any] | None = None
    if args.trainer is None:
        settings = {"dataset": DATASET_ID, "config": CONFIG, "trainer": VARIANTS[0][1]}
        settings.update(
            warmup=1 if args.smoke else 2,
            min_steps=2 if args.smoke else 3,
            max_steps=2 if args.smoke else 100,
            train_s=0.0 if args.smoke else args.probe_s,
            val_steps=1 if args.smoke else 3,
            cases=1 if args.smoke else 2,
        )
        code = work / "probe.py"
        code.write_text(PROBE_CODE)
        probe_env = {**env, "nnUNet_results": str(work / "probe_results")}
        left = budget_s - (time.perf_counter() - start)
        cmd = [str(VENV / "bin" / "python"), str(code), json.dumps(settings), repr(time.time())]
        probe_step = run(cmd, logs / "probe.log", probe_env, timeout=left)
        check(probe_step, "timing probe")
        found = re.findall(r"^PROBE (.*)$", Path(probe_step["log"]).read_text(), re.M)
        if found:
            probe = json.loads(found[-1])
    left = budget_s - (time.perf_counter() - start)
    if args.trainer:
        trainer, epochs = args.trainer, {n: e for e, n in VARIANTS}.get(args.trainer)
        reason = "forced with --trainer"
    elif probe is None:
        trainer, epochs, reason = VARIANTS[0][1], 1, "the probe ran out of budget: 1 epoch"
    else:
        trainer, epochs, projections = choose(probe, left)
        need = projections[trainer] * SAFETY
        reason = (
            f"longest variant with projection x{SAFETY} <= {left:.0f} s left"
            if need <= left
            else f"even 1 epoch needs ~{need:.0f} s > {left:.0f} s left: run anyway, kill at budget"
        )
    chosen = trainer
    if args.smoke and not args.trainer:
        trainer, reason = SMOKE_TRAINER, f"--smoke (the budget would choose {chosen})"
    print(f"trainer: {trainer} ({reason}); {left:.0f} s of the budget left", flush=True)

    train_cmd = [
        *nnunet_cli,
        "nnUNetv2_train",
        str(DATASET_ID),
        CONFIG,
        "all",
        "-tr",
        trainer,
        "-device",
        "cpu",
    ]
    train = run(train_cmd, logs / "train.log", env, timeout=left)
    wall, cpu = time.perf_counter() - start, child_cpu() - cpu0
    load_after = os.getloadavg()[0]
    check(train, "nnUNetv2_train")
    fold = work / "nnUNet_results" / DATASET / f"{trainer}__nnUNetPlans__{CONFIG}" / "fold_all"
    if (fold / "checkpoint_final.pth").is_file():
        checkpoint = "checkpoint_final.pth"
        status = "trained" + (
            " (its final validation cut at the budget)" if train["timed_out"] else ""
        )
    elif (fold / "checkpoint_best.pth").is_file():
        checkpoint, status = "checkpoint_best.pth", "killed at the budget: best checkpoint so far"
    else:
        checkpoint, status = None, "no model within budget"

    test_cases = [images[i].name.removesuffix(".nii.gz") for i in test_idx]
    predict: dict[str, Any] | None = None
    scores: dict[str, Any] = {"cmd": None, "wall_s": 0.0, "per_case": {}}
    if checkpoint is not None:
        pred_cmd = [*nnunet_cli, "nnUNetv2_predict", "-i", str(work / "test_images")]
        pred_cmd += ["-o", str(work / "predictions"), "-d", str(DATASET_ID), "-c", CONFIG]
        pred_cmd += ["-f", "all", "-tr", trainer, "-device", "cpu", "-chk", checkpoint]
        pred_cmd += ["-npp", "1", "-nps", "1", "--disable_progress_bar"]
        predict = run(pred_cmd, logs / "predict.log", env)
        if predict["rc"] == 0:
            scores = evaluate(work / "predictions", work / "test_labels", work / "evaluation")
        elif train["timed_out"]:  # e.g. a checkpoint cut while being written
            checkpoint, status = None, f"{status}; its checkpoint does not predict"
        else:
            check(predict, "nnUNetv2_predict")
    per_case = scores["per_case"]
    if checkpoint is None:  # nothing to score: every test case counts as missed
        nan = float("nan")
        per_case = {
            n: {c: {"dice": 0.0, "hd95_mm": nan} for c in test_cases} for n in LABELS.values()
        }

    nnunet = {
        "tool": f"nnU-Net v2 {trainer}" + ("" if checkpoint else " (no model)"),
        "budget": args.budget,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "dice": means(per_case, "dice"),
        "hd95": means(per_case, "hd95_mm"),
    }
    rows = [nnunet]
    other = hsftrain_row(args.hsftrain_tag)
    if other is not None:
        rows.insert(0, {"tool": f"hsftrain ({args.hsftrain_tag})", **other})
    title = "nnU-Net v2 vs hsftrain, 42 held-out MSD cases" + (" [SMOKE]" if args.smoke else "")
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table(rows, title))
    observed = epoch_times(work / "nnUNet_results")
    console.print(
        f"nnU-Net: {status}; plan+preprocess {plan['wall_s']:.0f} s, probe "
        f"{probe_step['wall_s'] if probe_step else 0:.0f} s, train {train['wall_s']:.0f} s"
        f"{' (killed at budget)' if train['timed_out'] else ''}; predict "
        f"{predict['wall_s'] if predict else 0:.0f} s for {len(test_cases)} cases (not in budget)"
    )
    if probe:
        step = sum(probe["train_step_s"]) / len(probe["train_step_s"])
        console.print(
            f"probe: {step:.2f} s/iteration (batch {probe['batch_size']}, patch "
            f"{probe['patch_size']}), {len(probe['train_step_s'])} timed; projected "
            f"{projections.get(chosen, 0):.0f} s for {chosen}; epoch times seen {observed}"
        )

    result = {
        "what": "nnU-Net v2 3d_fullres fold all on the train+validation cases of "
        "train_heldout.py split(), CPU, wall-time budget; Dice/HD95 on its test cases",
        "smoke": args.smoke,
        "machine": machine_info(),
        "settings": {
            "budget": args.budget,
            "budget_s": budget_s,
            "work": str(work),
            "dataset": DATASET,
            "configuration": CONFIG,
            "n_train": len(train_idx),
            "n_test": len(test_idx),
            "env": {k: env[k] for k in sorted(env) if k.startswith("nnUNet_")},
            "venv": venv,
            "safety": SAFETY,
            "epoch_overhead_s": EPOCH_OVERHEAD_S,
            "end_overhead_s": END_OVERHEAD_S,
        },
        "trainer": trainer,
        "trainer_by_budget": chosen,
        "epochs": epochs,
        "choice": reason,
        "probe": probe,
        "probe_s_per_iteration": (
            round(sum(probe["train_step_s"]) / len(probe["train_step_s"]), 3) if probe else None
        ),
        "projected_s": projections,
        "status": status,
        "checkpoint": checkpoint,
        "observed_epoch_s": observed,
        "steps": {
            "plan_and_preprocess": plan,
            "probe": probe_step,
            "train": train,
            "predict": predict,
        },
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "cpu_note": "children's CPU seconds (RUSAGE_CHILDREN): processes killed at the budget "
        "are counted only as far as they were waited for",
        "loadavg_1m_before_after": [round(load_before, 2), round(load_after, 2)],
        "predict_wall_s": predict["wall_s"] if predict else None,
        "predict_cpu_s": predict["cpu_s"] if predict else None,
        "evaluate": scores.get("cmd"),
        "test_cases": test_cases,
        "test_dice": {
            n: {c: round(m["dice"], 4) for c, m in v.items()} for n, v in per_case.items()
        },
        "test_hd95_mm": {
            n: {c: round(m["hd95_mm"], 3) for c, m in v.items()} for n, v in per_case.items()
        },
        "test_dice_mean": nnunet["dice"],
        "test_hd95_mean": nnunet["hd95"],
        "hsftrain": other,
    }
    name = "peer_nnunet_smoke.json" if args.smoke else "peer_nnunet.json"
    (RESULTS / name).write_text(json.dumps(no_nan(result), indent=1, allow_nan=False))
    return result


if __name__ == "__main__":
    main()
