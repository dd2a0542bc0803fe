"""Fine-tuning: unfreezing schedule, new head, frozen weights bit-identical, Dice gain."""

import numpy as np
import pytest
import torch

from hsftrain.models import ResidualUNet3D
from hsftrain.training.finetuning import apply_freeze, trainable_levels, unfreeze_path
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


def _val_dice(net, run_dir, subjects, specs, patch):
    import json

    from hsftrain.data.dataset import SubjectDataset

    ids = json.loads((run_dir / "split.json").read_text())["val"]
    chosen = [s for s in subjects if s.id in ids]
    dataset = SubjectDataset(chosen, specs, patch)
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

    from hsftrain.config import compose
    from hsftrain.data.discovery import discover
    from hsftrain.data.nifti import load_volume, save_volume
    from hsftrain.training.checkpoint import load_network, read_checkpoint
    from hsftrain.training.run import finetune, train

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
    baseline = _val_dice(fresh, run_dir, found.subjects, found.datasets, None)
    tuned = _val_dice(net, run_dir, found.subjects, found.datasets, None)
    assert tuned > baseline + 0.05, (baseline, tuned)


def test_pretrained_by_url_is_fetched_and_verified(tmp_path):
    from hsftrain.config import ConfigError, compose
    from hsftrain.hub import file_hash
    from hsftrain.training.run import _pretrained

    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"weights")
    url = ckpt.as_uri()
    spec = f"finetuning.pretrained={{url: '{url}', xxh3_64: {file_hash(ckpt)}}}"
    cache = tmp_path / "cache"
    got = _pretrained(compose("config", [spec, f"finetuning.cache_dir={cache}"]))
    assert got.parent == cache and got.read_bytes() == b"weights"
    bad = f"finetuning.pretrained={{url: '{url}', xxh3_64: '0000000000000000'}}"
    with pytest.raises(ValueError, match="0000000000000000"):
        _pretrained(compose("config", [bad, f"finetuning.cache_dir={cache}/2"]))
    with pytest.raises(ConfigError, match="finetuning.pretrained"):
        _pretrained(compose("config"))


def test_bad_pretrained_writes_no_run_directory(phantoms, tmp_path):
    from hsftrain.config import ConfigError, compose
    from hsftrain.training.run import finetune

    data = ["datasets=synth", f"datasets.main_path={phantoms}", f"datasets.output_path={tmp_path}"]
    with pytest.raises(ConfigError, match="finetuning.pretrained must be set"):
        finetune(compose("config", [*TINY, *data, "run_name=none"]))
    not_ours = tmp_path / "hsf_train.ckpt"
    torch.save({"state_dict": {"_model.final_conv.weight": torch.zeros(6, 64, 1, 1, 1)}}, not_ours)
    with pytest.raises(ValueError, match="hsf_train"):
        finetune(
            compose("config", [*TINY, *data, "run_name=x", f"finetuning.pretrained={not_ours}"])
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hsf_train.ckpt"]
