"""Every packaged config composes; the training groups also instantiate."""

from pathlib import Path

import pytest
import torch

from hsftrain.config.compose import ConfigError, compose, group_options

TRAIN_GROUPS = [
    "datasets",
    "models",
    "lightning",
    "finetuning",
    "logger",
    "augmentation",
    "compression",
]


def test_defaults_compose():
    cfg = compose("config")
    assert cfg.datasets.datasets.msd_sample.labels_names[1] == "anterior"
    assert cfg.models.name == "ResidualUNet3D"
    assert cfg.models.hparams.layer_order == "cgs"
    assert cfg.finetuning.mode == "decoder"


@pytest.mark.parametrize("group", TRAIN_GROUPS)
def test_every_training_option_composes(group):
    for option in group_options()[group]:
        cfg = compose("config", [f"{group}={option}"])
        assert group in cfg


def test_datasets_instantiate():
    from pathlib import Path

    from hsftrain.data.discovery import DatasetSpec

    for option in group_options()["datasets"]:
        overrides = [f"datasets={option}"] + (["datasets.path=/tmp"] if option == "folder" else [])
        d = compose("config", overrides).datasets
        specs = [
            DatasetSpec.from_config(n, i, Path(str(d.main_path)), e)
            for i, (n, e) in enumerate(d.datasets.items())
        ]
        assert specs and all(s.patterns for s in specs)


def test_models_and_lightning_and_augmentation_instantiate(tmp_path):
    import lightning as L

    from hsftrain.data.transforms import TORCHIO, augmentation
    from hsftrain.models import build_model
    from hsftrain.training.trainer import trainer_kwargs

    for option in group_options()["models"]:
        cfg = compose(
            "config", [f"models={option}", "models.hparams.f_maps=4", "models.hparams.num_levels=2"]
        )
        net = build_model(cfg.models.name, {**cfg.models.hparams, "out_channels": 3})
        assert net(torch.zeros(1, 1, 8, 8, 8)).shape[1] == 3
    cfg = compose("config")
    trainer = L.Trainer(default_root_dir=str(tmp_path), logger=False, **trainer_kwargs(cfg))
    assert trainer.max_epochs == cfg.lightning.max_epochs
    enabled = [k for k in TORCHIO if float((cfg.augmentation.get(k) or {}).get("p", 0))]
    transforms = augmentation(cfg.augmentation).transforms
    assert enabled and [type(t).__name__ for t in transforms] == [TORCHIO[k][0] for k in enabled]


def test_loggers_instantiate(tmp_path):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from hsftrain.training.trainer import make_logger

    for option, kind in (("tensorboard", TensorBoardLogger), ("csv", CSVLogger)):
        logger = make_logger(compose("config", [f"logger={option}"]), tmp_path)
        assert isinstance(logger, kind)
        assert Path(logger.log_dir) == tmp_path / "logs"  # a new run logs into <run>/logs
    try:
        import wandb  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"hsftrain\[wandb\]"):
            make_logger(compose("config", ["logger=wandb"]), tmp_path)


def test_unknown_key_and_option_are_clear():
    with pytest.raises(ConfigError, match="nonsense"):
        compose("config", ["models.nonsense=1"])
    with pytest.raises(ConfigError, match="datasets"):
        compose("config", ["datasets=does_not_exist"])
