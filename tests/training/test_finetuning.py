"""Fine-tuning: unfreezing schedule, new head, frozen weights bit-identical, Dice gain."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hsftrain.models import ResidualUNet3D
from hsftrain.training.finetuning import (
    apply_freeze,
    thawing_step_s,
    trainable_levels,
    unfreeze_path,
)
from tests.conftest import TINY


def test_unfreeze_paths():
    net = ResidualUNet3D(f_maps=4, num_levels=3, out_channels=2)
    dec = [name for name, _ in unfreeze_path(net, "decoder")]
    enc = [name for name, _ in unfreeze_path(net, "encoder")]
    assert dec == ["decoders.1", "decoders.0", "encoders.2", "encoders.1", "encoders.0"]
    assert enc == ["encoders.0", "encoders.1", "encoders.2", "decoders.0", "decoders.1"]
    with pytest.raises(ValueError, match="finetuning.mode"):
        unfreeze_path(net, "middle")


def test_schedule():
    # unfreeze_frequency 2, depth 2: head only for epochs 0-1, +1 level at 2-3, +2 from 4 on
    assert [trainable_levels(e, 2, 2, 5) for e in range(7)] == [0, 0, 1, 1, 2, 2, 2]
    assert trainable_levels(100, 1, -1, 5) == 5
    assert trainable_levels(0, 0, -1, 5) == 5 and trainable_levels(0, 0, 2, 5) == 2


def test_apply_freeze():
    net = ResidualUNet3D(f_maps=4, num_levels=2, out_channels=2)
    names = apply_freeze(net, "decoder", 1)
    assert names == ["head", "decoders.0"]
    assert all(p.requires_grad for p in net.head.parameters())
    assert all(p.requires_grad for p in net.decoders[0].parameters())
    assert not any(p.requires_grad for p in net.encoders.parameters())


def test_apply_freeze_keeps_the_auxiliary_heads_trainable():
    """A deep-supervision network's auxiliary heads are replaced with the head when the
    classes change, so they train with it (frozen fresh heads would feed noise back)."""
    net = ResidualUNet3D(f_maps=4, num_levels=3, out_channels=2, deep_supervision=True)
    apply_freeze(net, "decoder", 0)
    assert all(p.requires_grad for p in net.aux_heads.parameters())
    assert not any(p.requires_grad for p in net.decoders.parameters())


def _trainable_share(module: Any) -> float:
    """A stand-in step time: the share of trainable parameters (more thawed: slower)."""
    params = list(module.net.parameters())
    return sum(p.numel() for p in params if p.requires_grad) / sum(p.numel() for p in params)


def test_thawing_step_s_times_each_stage_of_the_schedule():
    import time
    import types

    module = types.SimpleNamespace(net=ResidualUNet3D(f_maps=4, num_levels=2, out_channels=2))
    schedule = types.SimpleNamespace(mode="decoder", depth=-1, unfreeze_frequency=2)
    step_s = thawing_step_s(module, schedule, 1.0, time.monotonic() + 60, _trainable_share)
    # path of 3 levels, a new one every 2 epochs: stages 0 0 1 1 2 2 3 3 3
    times = [step_s(e) for e in range(9)]
    assert times[0] == times[1] < times[2] == times[3] < times[4] == times[5] < times[6]
    assert times[6:] == [1.0, 1.0, 1.0]  # every level trainable: the step time given
    # depth 1: never further than one level, which is timed
    schedule.depth = 1
    step_s = thawing_step_s(module, schedule, 1.0, time.monotonic() + 60, _trainable_share)
    assert step_s(50) == step_s(2) < 1.0
    # no planning time left: every stage counts as the all-trainable time (ends early, not late)
    schedule.depth = -1
    step_s = thawing_step_s(module, schedule, 1.0, time.monotonic() - 1, _trainable_share)
    assert [step_s(e) for e in range(9)] == [1.0] * 9


def _val_dice(net, run_dir, found, cache):
    import json

    from hsftrain.data.cache import prepare
    from hsftrain.data.dataset import VolumeDataset

    ids = json.loads((run_dir / "split.json").read_text())["val"]
    chosen = [i for i, s in enumerate(found.subjects) if s.id in ids]
    dataset = VolumeDataset(prepare(found, cache, subjects=chosen, progress=False))
    scores = []
    net.eval()
    with torch.no_grad():
        for i in range(len(dataset)):
            item = dataset[i]
            pred = net(item["image"][None]).argmax(1)[0]
            for v in (1, 2):
                p, r = pred == v, item["label"] == v
                scores.append(float(2 * (p & r).sum() / max(int(p.sum() + r.sum()), 1)))
    return float(np.mean(scores))


@pytest.mark.slow
def test_finetune_new_label_scheme(phantoms, tmp_path):
    import shutil

    from hsftrain.config.compose import compose
    from hsftrain.data.discovery import discover
    from hsftrain.data.nifti import load_volume, save_volume
    from hsftrain.training.checkpoint import load_network, read_checkpoint
    from hsftrain.workflow import finetune, train

    data = ["datasets=synth", f"datasets.main_path={phantoms}", f"datasets.output_path={tmp_path}"]
    pre = train(
        compose(
            "config", [*TINY, *data, "run_name=pre", "lightning.max_epochs=3", "models.lr=1e-2"]
        )
    )
    pretrained = pre["best_checkpoint"]
    before, info = read_checkpoint(pretrained)
    assert len(info.class_names) == 8

    # new scheme, in a plain <id>_img / <id>_lbl folder: DG vs the rest of the hippocampus
    folder = tmp_path / "folder"
    folder.mkdir()
    for img in sorted(phantoms.glob("*_img.nii.gz")):
        label, affine = load_volume(str(img).replace("_img", "_lbl"))
        save_volume(
            np.minimum(label, 2).astype(np.uint8), affine, folder / img.name.replace("_img", "_lbl")
        )
        shutil.copy(img, folder / img.name)
    scheme = ["datasets=folder", f"datasets.path={folder}", f"datasets.output_path={tmp_path}"]
    overrides = [
        "datasets.batch_size=1",  # more steps for this tiny run
        *TINY,
        *scheme,
        "run_name=ft",
        f"finetuning.pretrained={pretrained}",
        "finetuning.out_channels=3",
        "finetuning.mode=decoder",
        "finetuning.depth=1",
        "finetuning.unfreeze_frequency=2",
        "lightning.max_epochs=4",
        "models.lr=1e-2",
        "models.use_forgiving_loss=False",
    ]
    out = finetune(compose("config", overrides))
    net, ft_info = load_network(out["run_dir"] + "/checkpoints/last.ckpt")
    assert net.out_channels == 3 and ft_info.class_names == ["background", "label_1", "label_2"]
    after = net.state_dict()
    # depth 1 in decoder mode: only the head and decoders.0 ever train
    for key, value in before.items():
        if key.startswith("head."):
            continue
        if key.startswith("decoders.0.") and value.is_floating_point() and "running" not in key:
            continue
        assert torch.equal(value, after[key]), f"{key} changed while frozen"
    changed = [
        k for k in before if k.startswith("decoders.0.") and not torch.equal(before[k], after[k])
    ]
    assert changed, "unfrozen level did not train"

    found = discover(compose("config", scheme).datasets)
    fresh, _ = load_network(pretrained)
    torch.manual_seed(0)
    fresh.replace_head(3)
    run_dir = tmp_path / "ft"
    baseline = _val_dice(fresh, run_dir, found, tmp_path / "prepared")
    tuned = _val_dice(net, run_dir, found, tmp_path / "prepared")
    assert tuned > baseline + 0.05, (baseline, tuned)


def test_pretrained_by_url_is_fetched_and_verified(tmp_path):
    from hsftrain.config.compose import ConfigError, compose
    from hsftrain.hub import file_hash
    from hsftrain.training.build import pretrained_path

    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"weights")
    url = ckpt.as_uri()
    spec = f"finetuning.pretrained={{url: '{url}', xxh3_64: {file_hash(ckpt)}}}"
    cache = tmp_path / "cache"
    got = pretrained_path(compose("config", [spec, f"finetuning.cache_dir={cache}"]))
    assert got.parent == cache and got.read_bytes() == b"weights"
    bad = f"finetuning.pretrained={{url: '{url}', xxh3_64: '0000000000000000'}}"
    with pytest.raises(ValueError, match="0000000000000000"):
        pretrained_path(compose("config", [bad, f"finetuning.cache_dir={cache}/2"]))
    with pytest.raises(ConfigError, match="finetuning.pretrained"):
        pretrained_path(compose("config", ["finetuning.pretrained=null"]))


def test_bad_pretrained_writes_no_run_directory(phantoms, tmp_path):
    from hsftrain.config.compose import ConfigError, compose
    from hsftrain.workflow import finetune

    data = ["datasets=synth", f"datasets.main_path={phantoms}", f"datasets.output_path={tmp_path}"]
    with pytest.raises(ConfigError, match="finetuning.pretrained must be set"):
        finetune(compose("config", [*TINY, *data, "run_name=none", "finetuning.pretrained=null"]))
    not_ours = tmp_path / "hsf_train.ckpt"
    torch.save({"state_dict": {"_model.final_conv.weight": torch.zeros(6, 64, 1, 1, 1)}}, not_ours)
    with pytest.raises(ValueError, match="hsf_train"):
        finetune(
            compose("config", [*TINY, *data, "run_name=x", f"finetuning.pretrained={not_ours}"])
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hsf_train.ckpt"]


# --- starting from HSF's published models (hsf_train checkpoints) ------------------------

REFERENCE = Path(__file__).resolve().parents[3] / "shared/data/hsf_train_reference"
needs_reference = pytest.mark.skipif(
    not (REFERENCE / "arunet_f8_random.ckpt").is_file(), reason="no ../shared hsf_train reference"
)
HSF_CLASSES = ["background", "DG", "CA1", "CA2", "CA3", "SUB"]


@pytest.fixture
def hsf_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The registry's ``arunet_4.0.0_single_ckpt`` (finetune's default) as a file:// URL of
    the f_maps-8 reference checkpoint (HSF 4.0.0's architecture, random weights); returns
    the download cache."""
    from hsftrain.hub import file_hash
    from hsftrain.hub import registry as registry_module

    ckpt = REFERENCE / "arunet_f8_random.ckpt"
    registry = tmp_path / "models.yaml"
    registry.write_text(
        f"arunet_4.0.0_single_ckpt:\n  url: '{ckpt.as_uri()}'\n"
        f"  xxh3_64: '{file_hash(ckpt)}'\n  kind: checkpoint\n"
    )
    monkeypatch.setattr(registry_module, "REGISTRY_PATH", registry)
    monkeypatch.setenv("HSFTRAIN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@needs_reference
def test_default_pretrained_is_hsf_4_0_0_from_the_registry(hsf_registry: Path) -> None:
    from hsftrain.config.compose import compose
    from hsftrain.training.build import read_pretrained

    cfg = compose("config")
    assert cfg.finetuning.pretrained == "arunet_4.0.0_single_ckpt"
    path, state, info = read_pretrained(cfg)
    assert path.parent == hsf_registry  # fetched into the cache and verified
    assert info.name == "HSFResidualUNet3D" and info.class_names == HSF_CLASSES
    assert (info.hparams["f_maps"], info.hparams["num_levels"]) == (8, 4)
    assert len(state) == 191


def _found(names: list[str], ca_type: str = "1/2/3") -> Any:
    from hsftrain.data.discovery import DatasetSpec, Discovery

    spec = DatasetSpec("d", 0, Path("."), ca_type, {}, None, None)
    return Discovery(datasets=[spec], subjects=[], dataset_classes={0: names})


def test_finetune_classes_keep_the_pretrained_names_when_the_data_fits() -> None:
    from hsftrain.config.compose import ConfigError, compose
    from hsftrain.data.labels import SUBFIELDS
    from hsftrain.training.build import finetune_classes

    cfg = compose("config")
    plain = compose("config", ["models.use_forgiving_loss=false"])
    coarse = _found(["background", "DG", "CA1", "CA2/3", "SUB"], "1/23")
    msd = _found(["background", "anterior", "posterior"])
    # HSF names at another granularity, forgiving loss: HSF's six classes and head are kept
    assert finetune_classes(cfg, coarse, None, HSF_CLASSES) == HSF_CLASSES
    assert finetune_classes(cfg, coarse, 6, HSF_CLASSES) == HSF_CLASSES
    # without the forgiving loss, or another scheme: the data's classes (a new head)
    assert finetune_classes(plain, coarse, None, HSF_CLASSES) == coarse.dataset_classes[0]
    assert finetune_classes(cfg, msd, None, HSF_CLASSES) == ["background", "anterior", "posterior"]
    with pytest.raises(ConfigError, match=r"finetuning.out_channels=3 for a new head"):
        finetune_classes(plain, msd, 6, HSF_CLASSES)  # three classes never trained: refused
    # the guide's custom_dataset: eight classes named like HSF's plus HEAD and TAIL
    subfields = _found(list(SUBFIELDS))
    assert finetune_classes(plain, subfields, 8, HSF_CLASSES) == list(SUBFIELDS)
    assert finetune_classes(cfg, subfields, None, HSF_CLASSES) == list(SUBFIELDS)
    named = compose("config", ["models.labels_names={1: a, 2: b}"])
    assert finetune_classes(named, coarse, None, HSF_CLASSES) == ["background", "a", "b"]
    with pytest.raises(ConfigError, match="finetuning.out_channels"):
        finetune_classes(plain, subfields, 6, HSF_CLASSES)


def _custom_dataset(phantoms: Path, root: Path) -> Path:
    """The phantoms laid out as conf/datasets/custom_dataset.yaml expects (right T2 crops)."""
    import shutil

    for i, img in enumerate(sorted(phantoms.glob("*_img.nii.gz"))):
        sub = root / "custom_dataset" / f"sub-{i:02d}"
        sub.mkdir(parents=True)
        shutil.copy(img, sub / f"sub-{i:02d}_T2w_hippocampus_R.nii.gz")
        lbl = str(img).replace("_img", "_lbl")
        shutil.copy(lbl, sub / f"sub-{i:02d}_T2w_hippocampus_R_seg.nii.gz")
    return root


QUICK = [
    "lightning.enable_progress_bar=false",
    "logger=csv",
    "augmentation.elastic.p=0",
    "augmentation.motion.p=0",
]


@needs_reference
@pytest.mark.slow
def test_guide_command_finetunes_hsf_4_0_0_exports_and_segments(
    hsf_registry: Path, phantoms: Path, tmp_path: Path
) -> None:
    """docs/finetuning.md's command (no finetuning.pretrained: HSF 4.0.0 from the registry)
    through the CLI, then `hsftrain segment` with the exported model."""
    from typer.testing import CliRunner

    from hsftrain.cli.app import app
    from hsftrain.core.onnx_metadata import read_metadata
    from hsftrain.data.labels import SUBFIELDS
    from hsftrain.inference.writer import read_volumes
    from hsftrain.training.checkpoint import read_checkpoint

    root = _custom_dataset(phantoms, tmp_path / "data")
    runner = CliRunner()
    guide = "datasets=custom_dataset finetuning.out_channels=8 models.lr=1e-3"
    result = runner.invoke(
        app,
        [
            "finetune",
            *guide.split(),
            "models.use_forgiving_loss=False",
            f"datasets.main_path={root}",
            f"datasets.output_path={tmp_path / 'runs'}",
            "run_name=hsf",
            "lightning.max_epochs=2",
            "finetuning.unfreeze_frequency=1",  # epoch 0: head; epoch 1: + decoders.2
            *QUICK,
        ],
    )
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "hsf"
    tuned, info = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert info.name == "HSFResidualUNet3D" and info.class_names == list(SUBFIELDS)
    assert tuned["final_conv.weight"].shape == (8, 8, 1, 1, 1)
    start, _ = read_checkpoint(REFERENCE / "arunet_f8_random.ckpt")
    for key, value in start.items():
        if key.startswith(("final_conv.", "decoders.2.")):
            continue
        assert torch.equal(value, tuned[key]), f"{key} changed while frozen"
    assert any(not torch.equal(start[k], tuned[k]) for k in start if k.startswith("decoders.2."))

    onnx = run_dir / "model.onnx"
    meta = read_metadata(onnx)
    assert meta["labels_names"] == list(SUBFIELDS) and meta["model_name"] == "HSFResidualUNet3D"
    out = tmp_path / "segmented"
    result = runner.invoke(
        app,
        [
            "segment",
            f"files.path={root}",
            "files.pattern=**/sub-0[01]_T2w_hippocampus_R.nii.gz",
            f"files.output_dir={out}",
            "segmentation=custom",
            f"model_paths=[{onnx}]",
            "segmentation.tta=false",
            "hardware=cpu",
            "qc=false",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(list(out.rglob("*_hippocampus_seg.nii.gz"))) == 2
    assert {r["name"] for r in read_volumes(out / "volumes.csv")} <= set(SUBFIELDS[1:])


@needs_reference
@pytest.mark.slow
def test_hsf_classes_carried_into_the_finetuned_model(phantoms: Path, tmp_path: Path) -> None:
    """Labels at the 1/23 granularity with the forgiving loss: HSF's six classes and head
    are kept, so the exported model merges CA2/CA3 with ca_mode and reports volumes."""
    from hsftrain.config.compose import compose
    from hsftrain.core.onnx_metadata import read_metadata
    from hsftrain.data.nifti import load_volume, save_volume
    from hsftrain.inference.api import segment
    from hsftrain.inference.writer import read_volumes
    from hsftrain.workflow import finetune

    folder = tmp_path / "folder"
    folder.mkdir()
    lut = np.array([0, 1, 2, 3, 3, 4, 0, 0], dtype=np.uint8)  # CA3 -> CA2/3, no HEAD/TAIL
    for img in sorted(phantoms.glob("*_img.nii.gz")):
        label, affine = load_volume(str(img).replace("_img", "_lbl"))
        save_volume(lut[label.astype(int)], affine, folder / img.name.replace("_img", "_lbl"))
        save_volume(*load_volume(img), folder / img.name)
    out = finetune(
        compose(
            "config",
            [
                "datasets=folder",
                f"datasets.path={folder}",
                f"datasets.output_path={tmp_path / 'runs'}",
                "datasets.datasets.folder.ca_type=1/23",
                "datasets.datasets.folder.labels_names={1: DG, 2: CA1, 3: CA2/3, 4: SUB}",
                f"finetuning.pretrained={REFERENCE / 'arunet_f8_random.ckpt'}",
                "run_name=carried",
                "lightning.max_epochs=1",
                *QUICK,
            ],
        )
    )
    onnx = Path(out["run_dir"]) / "model.onnx"
    assert read_metadata(onnx)["labels_names"] == HSF_CLASSES
    images = folder / "seg"
    images.mkdir()
    save_volume(*load_volume(sorted(folder.glob("*_img.nii.gz"))[0]), images / "a_T2w.nii.gz")
    cfg = compose(
        "segment",
        [
            f"files.path={images}",
            "files.pattern=*_T2w.nii.gz",
            "segmentation=custom",
            f"model_paths=[{onnx}]",
            "segmentation.ca_mode=1/23",
            "segmentation.tta=false",
            "segmentation.largest_component=false",
            "hardware=cpu",
            "qc=false",
        ],
    )
    segment(cfg)
    names = {r["name"] for r in read_volumes(images / "volumes.csv")}
    assert names and names <= {"DG", "CA1", "CA2/3", "SUB"}, names


def test_hparams_given_for_a_finetuning_are_reported_as_not_used() -> None:
    """Fine-tuning keeps the pretrained network: a models.hparams value you gave that it
    does not have is named (the run warns), defaults and matching values are not."""
    from hsftrain.config.compose import compose
    from hsftrain.training.build import ignored_hparams
    from hsftrain.training.checkpoint import ModelInfo

    info = ModelInfo("ResidualUNet3D", {"f_maps": 24, "num_levels": 4}, ["background"], "1/2/3", {})
    given = compose(
        "config",
        ["models.hparams.f_maps=16", "models.hparams.num_levels=4", "models.lr=1e-3"]
        + ["models.hparams.deep_supervision=true"],
    )
    assert ignored_hparams(given, info) == [
        "models.hparams.f_maps=16 (pretrained: 24)",
        "models.hparams.deep_supervision=True (pretrained: None)",
    ]
    assert ignored_hparams(compose("config"), info) == []
