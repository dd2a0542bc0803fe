"""Every ``hsftrain`` command shown in README.md and docs/*.md runs.

The commands are extracted from the shell code blocks of the pages (continuation lines
joined, shell variables of the block expanded, quotes and comments handled as the shell
does) and must each have an entry in :data:`EXAMPLES`, which says how the test runs it:

* ``run``: as written, in a sandbox where the paths it names exist (tiny phantoms, a few
  real MSD crops, a tiny trained run ``runs/x``), with ``~`` pointing into the sandbox,
  the documented placeholders replaced (:data:`PLACEHOLDERS`) and, for training, small
  overrides appended (:data:`TINY_TRAIN`) so that it takes seconds;
* ``compose``: only composed (``--cfg job``) because running it needs the network or
  hours of compute; the entry says why.

A command added to the docs without an entry, or an entry whose command left the docs,
fails :func:`test_every_documented_command_is_listed`: the list is kept in sync.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from hsftrain.cli.app import app
from tests.conftest import SAMPLE

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}

#: Appended to ``train`` / ``finetune`` commands: a tiny network, one short epoch.
TINY_TRAIN = [
    "models.hparams.f_maps=4",
    "models.hparams.num_levels=2",
    "lightning.max_epochs=1",
    "lightning.limit_train_batches=2",
    "lightning.limit_val_batches=2",
    "lightning.enable_progress_bar=false",
    "logger=csv",
    "validation.surface_every=-1",
    "augmentation.elastic.p=0",
    "augmentation.motion.p=0",
]
#: The same for commands whose network comes from a checkpoint or a run (no model keys).
TINY_EPOCHS = TINY_TRAIN[2:]
#: Documented placeholders and what they stand for in the sandbox.
PLACEHOLDERS = {"<run>": "x", "DIR_OR_GLOB": "runs/preds", "DIR": "crops"}


@dataclass(frozen=True)
class Example:
    """How one documented command is checked.

    Attributes:
        mode: ``run``, ``compose`` (``--cfg job`` only) or ``help`` (a command without
            config: run as written, it only reads).
        why: for ``compose``, why it is not run.
        extra: overrides appended when it runs (besides :data:`TINY_TRAIN`).
        tiny: which tiny overrides to append: ``train``, ``epochs`` or ``none``.
        replace: ``{text: replacement}`` for this command's own placeholders.
        slow: several trainings (still run by CI with the slow tests).
    """

    mode: str = "run"
    why: str = ""
    extra: tuple[str, ...] = ()
    tiny: str = "none"
    replace: dict[str, str] = field(default_factory=dict)
    slow: bool = False


NETWORK = "downloads published HSF models from the hub (no network in the tests)"
BENCH = "benchmark recipe on all 208 MSD cases, timed by hand (docs/results.md)"
EXAMPLES: dict[str, Example] = {
    # README.md
    "hsftrain --help": Example("help"),
    "hsftrain train --help": Example("help"),
    "hsftrain train --cfg job": Example("help"),
    "hsftrain data synth --out synth --n 20": Example("help", extra=("--shape", "16x20x16")),
    # docs/user_guide.md: your own dataset config
    "hsftrain data init my_labels --out my_ds.yaml": Example(),
    "hsftrain train datasets=my_ds.yaml": Example(tiny="train"),
    "hsftrain train datasets=sample models.hparams.f_maps=16 lightning.max_epochs=5 "
    "models.lr=1e-2": Example(tiny="train"),
    "hsftrain train datasets=msd": Example(tiny="train"),
    "hsftrain segment files.path=DIR files.pattern=*.nii.gz segmentation=msd": Example(),
    "hsftrain train resume=runs/<run> lightning.max_epochs=30": Example(
        replace={"lightning.max_epochs=30": "lightning.max_epochs=2"}  # runs/x is tiny
    ),
    "hsftrain train datasets=sample ensemble.members=5 run_name=bag": Example(
        tiny="train", slow=True
    ),
    "hsftrain finetune datasets=custom_dataset finetuning.out_channels=8 models.lr=1e-3 "
    "models.use_forgiving_loss=False": Example(
        "compose", "starts from the published HSF 4.0.0 checkpoint (network)"
    ),
    "hsftrain finetune datasets=folder datasets.path=my_labels/ "
    "finetuning.pretrained=runs/x/checkpoints/last.ckpt": Example(tiny="epochs"),
    "hsftrain export ckpt=runs/<run>/checkpoints/last.ckpt out=model.onnx": Example(),
    "hsftrain segment files.path=DIR files.pattern=**/*T2w.nii.gz "
    "segmentation=bagging_accurate": Example("compose", NETWORK),
    "hsftrain evaluate pred=DIR_OR_GLOB ref=DIR_OR_GLOB": Example(
        replace={"ref=runs/preds": "ref=data/msd_hippocampus/labelsTr"}
    ),
    "hsftrain hub list": Example("help"),
    # docs/evaluation.md
    "hsftrain evaluate pred=runs/preds ref=data/msd_hippocampus/labelsTr": Example(),
    "hsftrain evaluate pred=runs/preds/*_seg.nii.gz ref=data/refs/*_lbl.nii.gz "
    "labels={1:DG,2:CA1,3:CA2,4:CA3,5:SUB} out=runs/evaluation": Example(),
    "hsftrain evaluate pred=out/sub-01_T1w_hippocampus_seg.nii.gz "
    "ref=fs/sub-01/mri/aparc+aseg.mgz ref_map={17: 1, 53: 1} "
    "labels={1: hippocampus}": Example(),
    "hsftrain evaluate pred=runs/preds ref=data/refs --cfg job": Example("help"),
    "hsftrain evaluate pred=preds ref=refs id_regex='^(?P<id>sub-[^_]+)'": Example(),
    # docs/export.md
    "hsftrain export ckpt=runs/x/checkpoints/last.ckpt": Example(),
    "hsftrain export ckpt=runs/x/checkpoints/last.ckpt out=models/arunet.onnx": Example(),
    "hsftrain export ckpt=runs/x/checkpoints/last.ckpt out=models/arunet.onnx "
    "weights=float16": Example(),
    "hsftrain export ckpt=runs/x/checkpoints/last.ckpt out=models/arunet.int8.onnx "
    "quantize=int8": Example(extra=("verify.min_agreement=0.5",)),
    "hsftrain export ckpt=runs/x/checkpoints/last.ckpt quantize=int8 "
    "calibration.path=data/t2_crops calibration.pattern=**/*_T2w*.nii.gz "
    "calibration.num_images=32 calibration.method=percentile": Example(
        extra=("verify.min_agreement=0.5",)
    ),
    "hsftrain train datasets=msd compression=scratch lightning.max_epochs=40": Example(
        tiny="train",
        extra=(
            "compression.pruning.start_epoch=0",
            "compression.pruning.end_epoch=1",
            "compression.pruning.update_frequency=1",
        ),
    ),
    "hsftrain finetune finetuning.pretrained=runs/x/checkpoints/last.ckpt "
    "compression=finetuning lightning.max_epochs=8": Example(
        tiny="epochs",
        extra=(
            "compression.pruning.start_epoch=0",
            "compression.pruning.end_epoch=1",
            "compression.pruning.update_frequency=1",
        ),
    ),
    "hsftrain finetune finetuning.pretrained=runs/x/checkpoints/last.ckpt "
    "compression=finetuning lightning.max_epochs=1 compression.pruning.start_epoch=0 "
    "compression.pruning.end_epoch=0.6 compression.pruning.update_frequency=0.1": Example(
        tiny="epochs"
    ),
    "hsftrain finetune datasets=msd finetuning.pretrained=runs/x/checkpoints/last.ckpt "
    "finetuning.unfreeze_frequency=0 compression=structured lightning.max_epochs=1": Example(
        tiny="epochs"
    ),
    "hsftrain train datasets=msd compression=structured compression.structured.epoch=20 "
    "lightning.max_epochs=30": Example(
        tiny="train", extra=("compression.structured.epoch=0",), slow=True
    ),
    # docs/finetuning.md
    "hsftrain finetune datasets=folder datasets.path=~/my_segmentations "
    "finetuning.pretrained=runs/big/checkpoints/last.ckpt finetuning.mode=decoder "
    "finetuning.depth=2 finetuning.unfreeze_frequency=4 lightning.max_epochs=12": Example(
        tiny="epochs"
    ),
    "hsftrain finetune datasets=folder datasets.path=my_labels/ "
    "finetuning.pretrained=hsftrain_msd_1.2_ckpt": Example(tiny="epochs"),
    # docs/segmentation.md
    "hsftrain segment files.path=~/data files.pattern=**/*T2w.nii.gz "
    "segmentation=bagging_accurate": Example("compose", NETWORK),
    "hsftrain segment files.path=~/data files.pattern=**/*T1w.nii.gz "
    "segmentation=single_fast files.output_dir=~/results": Example("compose", NETWORK),
    "hsftrain segment files.path=~/data files.pattern=**/*.nii.gz "
    "model_paths=[/models/a.onnx,/models/b.onnx]": Example(),
    "hsftrain segment files.path=~/crops files.pattern=hippocampus_2[0-9]*.nii.gz "
    "segmentation=demo": Example(),
    "hsftrain segment files.path=~/crops files.pattern=*.nii.gz segmentation=demo": Example(),
    "hsftrain segment files.path=~/crops files.pattern=*.nii.gz segmentation=msd": Example(),
    "hsftrain segment segmentation=single_fast --cfg job": Example("help"),
    "hsftrain segment ... model_paths=[/x/a.onnx,/x/b.onnx]": Example(
        replace={"...": "files.path=~/data files.pattern=**/*T1w.nii.gz"}
    ),
    "hsftrain segment ... segmentation=custom segmentation.models={mine: {path: "
    "/x/model.onnx}}": Example(
        replace={"...": "files.path=~/data files.pattern=**/*T1w.nii.gz files.overwrite=true"}
    ),
    "hsftrain segment ... segmentation=custom segmentation.models={mine: {url: "
    '"https://host/model.onnx", xxh3_64: "0123456789abcdef"}}': Example(
        "compose", "downloads the model from its URL", replace={"...": "files.path=~/data"}
    ),
    "hsftrain hub fetch bagging_accurate": Example("compose", NETWORK),
    "hsftrain hub fetch arunet_4.0.0_single --cache-dir /shared/hsftrain-models": Example(
        "compose", NETWORK
    ),
    # docs/cluster.md
    "hsftrain segment files.path=~/data files.pattern=**/*T1w.nii.gz segmentation=demo "
    "hardware.jobs=2": Example(),
    "hsftrain segment files.path=/data/cohort files.pattern=**/*T1w.nii.gz "
    "segmentation=bagging_accurate hardware.jobs=4 hardware.devices=[0,1,2,3] "
    "hardware.engine_settings.batch_size=8": Example("compose", NETWORK),
    "hsftrain segment files.path=/data/adni files.pattern=sub-*/ses-*/anat/*_T1w.nii.gz "
    "files.output_dir=/scratch/adni_hsf segmentation=bagging_fast hardware=cpu "
    "hardware.jobs=4": Example("compose", NETWORK),
    "hsftrain volumes merge /scratch/adni_hsf": Example(replace={"/scratch/adni_hsf": "shards"}),
    # docs/segmentation.md, BIDS input
    "hsftrain segment ~/bids ~/bids/derivatives/hsftrain participant --participant-label 01 "
    "segmentation=demo": Example(),
    "hsftrain segment files.path=~/bids files.bids=true files.session_label=[A] "
    "files.suffix=[T1w,T2w] segmentation=demo": Example(),
    # docs/segmentation.md, multispectral
    "hsftrain segment files.path=~/data files.pattern=**/*T1w.nii.gz "
    "files.t2_pattern={id}_T2w.nii.gz segmentation=demo multispectral.t2_space=true": Example(
        extra=("files.overwrite=true",)
    ),
    # docs/user_guide.md, ASHS (sandbox: ASHS-like phantoms in HSFTRAIN_ASHS)
    "hsftrain data prepare datasets=ashs_test": Example(),
    "hsftrain train datasets=ashs_test models.hparams.f_maps=8 models.hparams.num_levels=3 "
    "run_name=ashs": Example(tiny="train"),
    "hsftrain finetune datasets=ashs_test finetuning.pretrained=runs/x/checkpoints/last.ckpt "
    "finetuning.out_channels=6 run_name=ashs_ft": Example(tiny="epochs"),
    "hsftrain train datasets=ashs_msd datasets.patch_size=[32,16,32] "
    "models.hparams.num_levels=3 run_name=ashs_msd": Example(tiny="train"),
    # docs/user_guide.md
    "hsftrain data prepare datasets=msd": Example(),
    "hsftrain train datasets=msd budget=30m": Example("compose", BENCH),
    "hsftrain plan datasets=msd budget=30m plan_path=msd_30m.yaml": Example("compose", BENCH),
    "hsftrain train datasets=msd plan=msd_30m.yaml": Example("compose", BENCH),
    "hsftrain train datasets=msd lightning=ddp": Example(
        "compose", "needs several GPUs (DDP on CPU: tests/training/test_distributed.py)"
    ),
    "hsftrain segment files.path=DIR files.pattern=*.nii.gz "
    "segmentation=runs/bag/preset.yaml": Example(slow=True),
    "hsftrain segment files.path=new/ files.pattern=*_img.nii.gz files.output_dir=pred/ "
    "segmentation=custom model_paths=[runs/base/model.onnx]": Example(),
    "hsftrain report pred/ --images new/": Example(),
    "hsftrain data collect pred/ --ratings qc_ratings.tsv --images new/ --init-ratings": Example(),
    "hsftrain data collect pred/ --ratings qc_ratings.tsv --images new/ --corrected corrected/ "
    "--out collected/": Example(),
    "hsftrain finetune datasets=folder datasets.path=collected/ run_name=ft "
    "finetuning.pretrained=runs/base/checkpoints/last.ckpt finetuning.depth=-1": Example(
        tiny="epochs", extra=("export_onnx=true",)
    ),
    "hsftrain segment files.path=heldout/ files.pattern=*_img.nii.gz "
    "files.output_dir=pred_ft/ segmentation=custom model_paths=[runs/ft/model.onnx]": Example(),
    "hsftrain evaluate pred=pred_ft/ ref=heldout/*_lbl.nii.gz": Example(),
    "hsftrain hub publish runs/ft --license CC-BY-4.0": Example(),
    "hsftrain segment files.path=heldout/ files.pattern=*_img.nii.gz "
    "files.output_dir=pred_pub/ segmentation=runs/ft/model.preset.yaml": Example(),
}


# --- extraction -------------------------------------------------------------------------


def _blocks(text: str) -> list[list[str]]:
    """Lines of the shell code blocks of a Markdown page."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        fence = re.match(r"^\s*```\s*(\w*)", line)
        if fence:
            if current is None:
                current = [] if fence.group(1) in SHELL_BLOCKS else None
                if current is None:  # a non-shell block: skip to its end
                    current = ["<skip>"]
            else:
                if current[:1] != ["<skip>"]:
                    blocks.append(current)
                current = None
            continue
        if current is not None:
            current.append(line)
    return blocks


def _logical_lines(lines: list[str]) -> list[str]:
    out, buffer = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            buffer += line.rstrip()[:-1] + " "
            continue
        out.append(buffer + line)
        buffer = ""
    if buffer:
        out.append(buffer)
    return out


def doc_commands() -> list[tuple[str, list[str]]]:
    """``(page, argv)`` of every ``hsftrain`` command in the pages' shell blocks, with the
    block's shell variables expanded and the shell's quote removal and comments applied."""
    found = []
    for page in PAGES:
        for block in _blocks(page.read_text()):
            env: dict[str, str] = {}
            for line in _logical_lines(block):
                words = shlex.split(line, comments=True)
                if len(words) == 1 and re.match(r"^[A-Za-z_]\w*=", words[0]):
                    name, _, value = words[0].partition("=")
                    env[name] = re.sub(r"\$(\w+)", lambda m, e=env: e.get(m.group(1), ""), value)
                    continue
                if not words or words[0] != "hsftrain":
                    continue
                argv: list[str] = []
                for word in words:
                    variable = re.fullmatch(r"\$(\w+)", word)
                    argv += env[variable.group(1)].split() if variable else [word]
                found.append((page.name, argv))
    return found


def key(argv: list[str]) -> str:
    return " ".join(argv)


# --- the sandbox ------------------------------------------------------------------------


def _phantoms(folder: Path, n: int = 4, **names: str) -> None:
    from hsftrain.data.synth import write_phantoms

    write_phantoms(folder, n=n, shape=(16, 20, 16), seed=0)
    for old, new in names.items():
        for path in sorted(folder.glob(f"*{old}")):
            path.rename(path.with_name(path.name.replace(old, new)))


def _ashs(folder: Path, subjects: int = 4) -> None:
    """An ASHS-like set: ``images/subNN_tse.nii.gz`` (a 40 x 8 x 36 slab of 1.5 x 4 x 1.5
    mm voxels holding two blobs) with left and right label maps (ASHS values 1 5 6 8 9)."""
    images = folder / "images"
    images.mkdir(parents=True)
    affine = np.diag([1.5, 4.0, 1.5, 1.0])
    rng = np.random.default_rng(0)
    for n in range(1, subjects + 1):
        tse = rng.normal(100, 5, (40, 8, 36)).astype(np.float32)
        for side, x in (("L", 6), ("R", 24)):
            label = np.zeros(tse.shape, np.uint8)
            label[x : x + 10, 1:7, 12:24] = 1
            label[x : x + 10, 5:7, 12:24] = 5  # head
            label[x : x + 10, 1:2, 12:24] = 6  # tail
            label[x : x + 3, 2:5, 12:16] = 8
            label[x : x + 3, 2:5, 9:12] = 9
            tse[label > 0] += 40 + 10 * label[label > 0]
            nib.save(nib.Nifti1Image(label, affine), str(images / f"sub{n:02d}_seg_{side}.nii.gz"))
        nib.save(nib.Nifti1Image(tse, affine), str(images / f"sub{n:02d}_tse.nii.gz"))


def _msd(folder: Path, cases: int = 6) -> None:
    """A tiny MSD-like tree (imagesTr, labelsTr) of real cases."""
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    for img in sorted(SAMPLE.glob("*_img.nii.gz"))[:cases]:
        name = img.name.replace("_img", "")
        shutil.copy(img, folder / "imagesTr" / name)
        shutil.copy(str(img).replace("_img", "_lbl"), folder / "labelsTr" / name)


def _run_cli(argv: list[str]) -> str:
    result = CliRunner().invoke(app, argv[1:])
    assert result.exit_code == 0, f"{key(argv)}\n{result.output}"
    return result.output


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A working folder with everything the documented commands name."""
    root = tmp_path_factory.mktemp("docs")
    home, work = root / "home", root / "work"
    work.mkdir()
    env = ("HOME", "HSFTRAIN_MSD", "HSFTRAIN_DATA", "HSFTRAIN_ASHS", "HSFTRAIN_SHARED_DATA")
    old = {k: os.environ.get(k) for k in env}
    os.environ["HOME"] = str(home)
    os.environ["HSFTRAIN_MSD"] = str(root / "msd")
    os.environ["HSFTRAIN_DATA"] = str(root / "custom")
    os.environ["HSFTRAIN_ASHS"] = str(root / "ashs")
    os.environ["HSFTRAIN_SHARED_DATA"] = str(root / "shared_data")
    cwd = Path.cwd()
    os.chdir(work)
    try:
        _msd(root / "msd")
        _phantoms(work / "my_labels")
        _phantoms(home / "my_segmentations")
        _phantoms(work / "new")
        _phantoms(work / "heldout")
        _phantoms(work / "new_labels")
        (work / "corrected").mkdir()  # the retraining loop's corrected label maps
        _phantoms(work / "crops", n=2)
        for label in (work / "crops").glob("*_lbl.nii.gz"):
            label.unlink()
        crops = home / "crops"
        crops.mkdir(parents=True)
        for i, img in enumerate(sorted(SAMPLE.glob("*_img.nii.gz"))[:2]):
            shutil.copy(img, crops / f"hippocampus_2{i}0_img.nii.gz")
        for i, img in enumerate(sorted(SAMPLE.glob("*_img.nii.gz"))[2:3]):
            shutil.copy(img, crops / f"hippocampus_1{i}0_img.nii.gz")
        for sub, modality in (("sub-01", "T1w"), ("sub-02", "T2w")):
            anat = home / "data" / sub / "anat"
            anat.mkdir(parents=True)
            shutil.copy(sorted(SAMPLE.glob("*_img.nii.gz"))[0], anat / f"{sub}_{modality}.nii.gz")
        bids = home / "bids"  # a BIDS dataset: 2 participants x 2 sessions, T1w and T2w
        images = sorted(SAMPLE.glob("*_img.nii.gz"))
        for i, name in enumerate(("sub-01/ses-A", "sub-01/ses-B", "sub-02/ses-A", "sub-02/ses-B")):
            (bids / name / "anat").mkdir(parents=True)
            for modality, img in (("T1w", images[i]), ("T2w", images[i + 1])):
                stem = name.replace("/", "_")
                shutil.copy(img, bids / name / "anat" / f"{stem}_{modality}.nii.gz")
        (bids / "dataset_description.json").write_text('{"Name": "docs", "BIDSVersion": "1.9.0"}')
        sub01_t2 = home / "data" / "sub-01" / "anat" / "sub-01_T2w.nii.gz"
        shutil.copy(sorted(SAMPLE.glob("*_img.nii.gz"))[1], sub01_t2)  # its T2 (multispectral)
        _ashs(root / "ashs")
        _ashs(root / "shared_data" / "ashs_atlas_test")
        _msd(root / "shared_data" / "msd_hippocampus")
        header = "subject,side,label,name,volume_mm3,voxel_count,flag\n"
        (work / "shards").mkdir()
        for i in (1, 2):  # the tables of a sharded segment run
            row = f"s{i},crop,1,anterior,{i}.0,{i},\n"
            (work / "shards" / f"volumes.{i}-of-2.csv").write_text(header + row)
        t2 = work / "data" / "t2_crops" / "sub-01"
        t2.mkdir(parents=True)
        for i, img in enumerate(sorted(SAMPLE.glob("*_img.nii.gz"))[:3]):
            shutil.copy(img, t2 / f"sub-0{i}_T2w_crop.nii.gz")
        # runs/x, runs/big, runs/base: tiny trained runs (runs/base exported)
        base = ["train", *TINY_TRAIN, "datasets=folder", "datasets.path=my_labels"]
        _run_cli(["hsftrain", *base, "run_name=x", "export_onnx=true"])
        shutil.copytree(work / "runs" / "x", work / "runs" / "big")
        shutil.copytree(work / "runs" / "x", work / "runs" / "base")
        # predictions and references for evaluate
        preds, refs = work / "runs" / "preds", work / "data" / "refs"
        labels = work / "data" / "msd_hippocampus" / "labelsTr"
        for folder in (preds, refs, labels, work / "preds", work / "refs", work / "out"):
            folder.mkdir(parents=True, exist_ok=True)
        for lbl in sorted((root / "msd" / "labelsTr").glob("*.nii.gz"))[:3]:
            sid = lbl.name.removesuffix(".nii.gz")
            shutil.copy(lbl, labels / lbl.name)
            shutil.copy(lbl, preds / f"{sid}_seg.nii.gz")
            shutil.copy(lbl, refs / f"{sid}_lbl.nii.gz")
        first = sorted(labels.glob("*.nii.gz"))[0]
        shutil.copy(first, work / "preds" / "sub-01_T1w_left_hippocampus_seg.nii.gz")
        shutil.copy(first, work / "refs" / "sub-01_left_lbl.nii.gz")
        shutil.copy(first, work / "out" / "sub-01_T1w_hippocampus_seg.nii.gz")
        image = nib.load(str(first))
        aseg = np.where(np.asarray(image.dataobj) > 0, 17, 0).astype(np.int32)
        (work / "fs" / "sub-01" / "mri").mkdir(parents=True)
        nib.save(nib.MGHImage(aseg, image.affine), str(work / "fs/sub-01/mri/aparc+aseg.mgz"))
        # /models/*.onnx and /x/*.onnx of the segmentation page live in the sandbox
        for folder, names in (("models", ("a", "b")), ("x", ("a", "b", "model"))):
            (root / folder).mkdir()
            for name in names:
                shutil.copy(work / "runs" / "x" / "model.onnx", root / folder / f"{name}.onnx")
        yield root
    finally:
        os.chdir(cwd)
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def prepared(argv: list[str], example: Example, root: Path) -> list[str]:
    """The argv a documented command runs with in the sandbox."""
    text = shlex.join(argv)
    for old, new in {**PLACEHOLDERS, **example.replace}.items():
        if old == "DIR":
            text = re.sub(r"\bDIR\b", new, text)
        else:
            text = text.replace(old, new)
    # absolute example folders (/models, /x, /shared) live in the sandbox
    text = re.sub(r"(?<=[\[,=\s])/(models|x|shared)/", lambda m: f"{root}/{m.group(1)}/", text)
    args = shlex.split(text)
    if example.tiny == "train":
        args += TINY_TRAIN
    elif example.tiny == "epochs":
        args += TINY_EPOCHS
    training = args[1] in ("train", "finetune")
    if training and not any(a.startswith(("run_name=", "resume=")) for a in args):
        args.append(f"run_name=doc{zlib.crc32(key(argv).encode())}")  # timestamps may collide
    return [*args, *example.extra]


# --- the tests --------------------------------------------------------------------------


def test_every_documented_command_is_listed() -> None:
    documented = {key(argv) for _, argv in doc_commands()}
    listed = set(EXAMPLES)
    missing = sorted(documented - listed)
    stale = sorted(listed - documented)
    assert not missing, "add these documented commands to EXAMPLES:\n" + "\n".join(missing)
    assert not stale, "these EXAMPLES are no longer in the docs:\n" + "\n".join(stale)
    for text, example in EXAMPLES.items():
        assert example.mode in ("run", "compose", "help"), text
        assert example.mode != "compose" or example.why, f"say why it is not run: {text}"


def _examples(mode: str, slow: bool) -> list[object]:
    out = []
    seen: set[str] = set()
    for _, argv in doc_commands():
        text = key(argv)
        example = EXAMPLES.get(text)
        if example is None or text in seen or example.mode != mode or example.slow != slow:
            continue
        seen.add(text)
        marks = [pytest.mark.slow] if slow else []
        out.append(pytest.param(argv, example, id=text[:70], marks=marks))
    return out


def _order(argv: list[str]) -> int:
    """Documented order: a command may use what an earlier one wrote (runs/ft)."""
    return [key(a) for _, a in doc_commands()].index(key(argv))


@pytest.mark.parametrize("argv, example", _examples("help", False))
def test_help_and_read_only_commands(argv: list[str], example: Example, sandbox: Path) -> None:
    _run_cli([*argv, *example.extra])


@pytest.mark.parametrize("argv, example", _examples("compose", False))
def test_commands_that_need_network_or_hours_compose(
    argv: list[str], example: Example, sandbox: Path
) -> None:
    args = prepared(argv, example, sandbox)
    if args[1] == "hub":  # not a config command: its help must list what it was given
        _run_cli([*args[:3], "--help"])
        return
    output = _run_cli([*args, "--cfg", "job"])
    assert output.strip()


@pytest.mark.parametrize(
    "argv, example",
    sorted(_examples("run", False), key=lambda p: _order(p.values[0]))
    + sorted(_examples("run", True), key=lambda p: _order(p.values[0])),
)
def test_documented_commands_run(argv: list[str], example: Example, sandbox: Path) -> None:
    _run_cli(prepared(argv, example, sandbox))
