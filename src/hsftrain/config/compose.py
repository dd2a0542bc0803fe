"""Compose the packaged Hydra configs with a user's ``key=value`` overrides."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from hsftrain.config import overrides as ov
from hsftrain.config import resume
from hsftrain.config.keys import get_value
from hsftrain.config.values import leaves
from hsftrain.core.errors import ConfigError

__all__ = [
    "COLLAPSED",
    "CONF_DIR",
    "ConfigError",
    "compose",
    "config_keys",
    "group_options",
    "require",
]

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).parents[1] / "conf"
#: Mappings listed as one key (their entries are the user's: datasets, models of a preset).
COLLAPSED: tuple[str, ...] = (
    "datasets.datasets",
    "segmentation.models",
    "segmentation.model_metadata",
)


def _split_file_groups(overrides: Sequence[str]) -> tuple[list[str], dict[str, Path], list[str]]:
    """Separate ``group=some/file.yaml`` overrides (a config file outside the package, e.g.
    the preset written by an ensemble run) and the ``group.key=value`` overrides that must
    be applied on top of them."""
    files: dict[str, Path] = {}
    groups = group_options()  # not a key whose value is a YAML file (plan=, plan_path=)
    for item in overrides:
        key, _, value = item.partition("=")
        if key in groups and value.endswith((".yaml", ".yml")):
            path = Path(value).expanduser()
            if not path.is_file():
                raise ConfigError(f"{key}={value}: no such config file")
            files[key] = path
    plain: list[str] = []
    late: list[str] = []
    for item in overrides:
        key = item.partition("=")[0]
        if key in files:
            continue
        (late if key.split(".")[0] in files else plain).append(item)
    return plain, files, late


def compose(config_name: str = "config", overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with Hydra-style ``overrides``.

    A group may also be given a YAML file path (``segmentation=runs/ens/preset.yaml``): the
    file is merged over the group's default option, then ``group.key=value`` overrides apply.

    Values of path and glob keys are taken as typed (``~`` expanded, brackets and spaces
    kept: :mod:`hsftrain.config.overrides`); a key the config does not have is an error (strict
    keys), except in the mappings meant to grow and ``lightning.<Trainer argument>``.
    ``resume=RUN`` (train / finetune) composes the run's own ``config.yaml`` instead of the
    defaults (:func:`hsftrain.config.resume.resume_config`).

    Raises:
        ConfigError: unknown config group option or unknown key (with the valid choices),
            an override that cannot be parsed (names it and the quoting that works).
    """
    overrides = ov.prepare(overrides)
    ov.check_additions(overrides, _command(config_name))
    overrides = _implied(config_name, overrides)
    if config_name == "config" and any(o.partition("=")[0] == "resume" for o in overrides):
        target = [o.partition("=")[2] for o in overrides if o.partition("=")[0] == "resume"][-1]
        target = target.strip("'\"")
        if target not in ("", "null"):
            saved = resume.saved_config(target)
            others = [o for o in overrides if o.partition("=")[0] != "resume"]
            return resume.resume_config(target, saved, others, compose("config", others))
    plain, files, late = _split_file_groups(overrides)
    cfg = _compose(config_name, plain)
    for group, path in files.items():
        if group not in cfg:
            raise ConfigError(f"{group}={path}: `{group}` is not a config group of {config_name}")
        data = OmegaConf.load(path)
        if not isinstance(data, DictConfig):
            raise ConfigError(f"{group}={path}: the file must hold a mapping of keys")
        if group == "segmentation":
            _anchor_model_paths(data, path.parent)
        with open_dict(cfg):
            for key, value in data.items():
                cfg[group][key] = value  # top-level keys replace the default's (e.g. models)
    if late:
        try:
            cfg.merge_with_dotlist(late)
        except Exception as err:
            raise ConfigError(f"{err}") from err
    return cfg


def _anchor_model_paths(preset: DictConfig, folder: Path) -> None:
    """Relative ``path`` entries of a preset file's models are relative to the file's folder
    (a run directory moved or shared keeps working)."""
    models = preset.get("models")
    if not isinstance(models, DictConfig):
        return
    for spec in models.values():
        if isinstance(spec, DictConfig) and isinstance(spec.get("path"), str):
            if not Path(spec.path).expanduser().is_absolute() and "${" not in spec.path:
                spec.path = str(folder / spec.path)


def _compose(config_name: str, overrides: Sequence[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        unknown = _UNKNOWN.search(str(err))
        if unknown:
            key = unknown.group(1)
            retry = _trainer_argument(key, overrides)
            if retry is not None:
                return _compose(config_name, retry)
            raise ConfigError(
                ov.unknown_key_message(key, config_keys(config_name), _command(config_name))
            ) from err
        command = _command(config_name)
        raise ConfigError(f"{err}\n(see `hsftrain {command} --help` for groups and keys)") from err
    finally:
        GlobalHydra.instance().clear()
    return cfg


#: Overrides implied by a key given without its group: ``segment model_paths=[...]``
#: without ``segmentation=<preset>`` runs each model once (no preset's 5 x 21 views).
IMPLIED: dict[str, dict[str, tuple[str, list[str]]]] = {
    "segment": {"model_paths": ("segmentation", ["segmentation=custom", "segmentation.tta=false"])}
}


def _implied(config_name: str, overrides: list[str]) -> list[str]:
    """``overrides`` with the :data:`IMPLIED` ones put first (the user's still win)."""
    keys = {o.partition("=")[0].lstrip("+"): o.partition("=")[2] for o in overrides}
    extra: list[str] = []
    for key, (group, implied) in IMPLIED.get(config_name, {}).items():
        if keys.get(key, "null").strip() not in ("null", "", "[]") and group not in keys:
            extra += implied
    return [*extra, *overrides]


_UNKNOWN = re.compile(r"Could not override '([^']+)'")


def _command(config_name: str) -> str:
    return "train" if config_name == "config" else config_name


def _trainer_argument(key: str, overrides: Sequence[str]) -> list[str] | None:
    """``lightning.X=v`` with X an argument of ``lightning.Trainer`` not in the packaged
    file: the overrides with ``+lightning.X=v``; None for any other key."""
    group, _, name = key.partition(".")
    if group != "lightning" or "." in name:
        return None
    import inspect

    import lightning

    if name not in inspect.signature(lightning.Trainer.__init__).parameters:
        return None
    return [f"+{o}" if o.partition("=")[0] == key else o for o in overrides]


def config_keys(config_name: str) -> list[str]:
    """Every dotted key of ``conf/<config_name>.yaml`` with its default groups (the
    mappings of :data:`COLLAPSED` as one key each)."""
    tree = OmegaConf.to_container(_compose(config_name, []), resolve=False, throw_on_missing=False)
    return [key for key, _ in leaves(tree, "", COLLAPSED)]


def group_options() -> dict[str, list[str]]:
    """Config groups packaged in ``conf/`` and the options of each."""
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(CONF_DIR.iterdir())
        if d.is_dir() and not d.name.startswith("_")
    }


def defaults_like(cfg: DictConfig) -> DictConfig | None:
    """The training config composed without overrides, when ``cfg`` uses the same network
    (``models.name``): what a key "left at its default" is compared with; None for
    another models group, whose defaults differ."""
    defaults = compose("config")
    if OmegaConf.select(defaults, "models.name") != OmegaConf.select(cfg, "models.name"):
        return None
    return defaults


def require(cfg: DictConfig, key: str, hint: str = "") -> object:
    """Value of ``key`` (dotted), or a ConfigError naming it.

    Raises:
        ConfigError: the key is missing or null.
    """
    value = get_value(cfg, key, None, missing="default")
    if value is None:
        raise ConfigError(f"`{key}` must be set{': ' + hint if hint else ''}")
    return value


def _assets(name: str = "") -> str:
    return str(Path(__file__).parents[1] / "assets" / name)


if not OmegaConf.has_resolver("hsftrain_assets"):
    OmegaConf.register_new_resolver("hsftrain_assets", _assets)
