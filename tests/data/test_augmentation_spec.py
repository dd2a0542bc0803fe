"""One augmentation spec: defaults in one place, read alike by both training backends and
test-time augmentation."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from hsftrain.config.compose import CONF_DIR
from hsftrain.core.errors import ConfigError
from hsftrain.data.augment import BatchAugment
from hsftrain.data.augmentation_spec import DEFAULTS, AugmentationSpec
from hsftrain.data.transforms import augmentation
from hsftrain.inference import tta

#: every transform on, with no parameter given: each reader must fall back on the spec
SPARSE = {name: {"p": 1.0} for name in DEFAULTS}


def test_defaults_are_the_packaged_yaml_values() -> None:
    packaged = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "augmentation" / "default.yaml"))
    assert isinstance(packaged, dict)
    for name, params in DEFAULTS.items():
        for key, value in params.items():
            if key in packaged[name]:
                expected = packaged[name][key]
                expected = tuple(expected) if isinstance(expected, list) else expected
                assert value == expected, f"augmentation.{name}.{key}"


def test_three_readers_see_the_same_values_for_a_config_missing_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = AugmentationSpec.from_config(SPARSE)
    # torch backend
    batch = BatchAugment(SPARSE)
    for name in DEFAULTS:
        assert getattr(batch, name) == spec[name]
    # torchio backend: the arguments each torchio transform is built with
    torchio_args: dict[str, dict[str, object]] = {}

    class Recorder:
        def __init__(self, name: str) -> None:
            self.name = name

        def __call__(self, **kwargs: object) -> str:
            torchio_args[self.name] = kwargs
            return self.name

    import torchio as tio

    for cls in ("RandomFlip", "RandomAffine", "RandomElasticDeformation", "RandomMotion",
                "RandomBlur", "RandomGamma"):  # fmt: skip
        monkeypatch.setattr(tio, cls, Recorder(cls))
    monkeypatch.setattr(tio, "Compose", lambda items: items)
    augmentation(SPARSE)
    assert torchio_args["RandomAffine"] == {**DEFAULTS["affine"], "p": 1.0}
    assert torchio_args["RandomElasticDeformation"] == {**DEFAULTS["elastic"], "p": 1.0}
    # test-time augmentation: the affine ranges it draws from
    seen: dict[str, object] = {}
    real = tta.affine_matrix

    def spy(shape, zooms, scales, degrees, translation):  # type: ignore[no-untyped-def]
        seen.update(scales=scales, degrees=degrees, translation=translation)
        return real(shape, zooms, scales, degrees, translation)

    monkeypatch.setattr(tta, "affine_matrix", spy)
    only_affine = {"affine": {"p": 1.0}}
    tta.sample_augmentation(only_affine, (8, 8, 8), (1, 1, 1), np.random.default_rng(0))
    scales = np.asarray(seen["scales"])
    assert ((scales >= 0.9) & (scales <= 1.1)).all() and not np.allclose(scales, 1)
    assert np.abs(np.asarray(seen["translation"])).max() > 0  # default translation: 3 mm


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"flip": {"p": 1.5}}, r"^`augmentation\.flip\.p`=1\.5: must be a finite number >= 0"),
        ({"flip": {"p": 1, "axes": ["XY"]}}, r"^augmentation\.flip\.axes: 'XY' is not an axis"),
        ({"affine": {"p": 1, "scale": 2}}, r"^augmentation\.affine\.scale: not a parameter"),
        ({"flipp": {"p": 1}}, r"^augmentation\.flipp: not an augmentation key"),
    ],
)
def test_every_reader_refuses_a_bad_key_with_one_line(cfg: dict, message: str) -> None:
    for reader in (
        BatchAugment,
        augmentation,
        lambda c: tta.sample_augmentation(c, (8, 8, 8), (1, 1, 1), np.random.default_rng(0)),
    ):
        with pytest.raises(ConfigError, match=message):
            reader(cfg)
