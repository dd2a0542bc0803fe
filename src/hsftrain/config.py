"""Compose the packaged Hydra configs with a user's ``key=value`` overrides."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).parent / "conf"


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and the fix."""


def compose(config_name: str = "config", overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with Hydra-style ``overrides``.

    Raises:
        ConfigError: unknown config group option or unknown key (with the valid choices).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"{err}\n(see `hsftrain {config_name} --help` for groups and keys)")
    finally:
        GlobalHydra.instance().clear()
    return cfg


def group_options() -> dict[str, list[str]]:
    """Config groups packaged in ``conf/`` and the options of each."""
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(CONF_DIR.iterdir())
        if d.is_dir() and not d.name.startswith("_")
    }


def require(cfg: DictConfig, key: str, hint: str = "") -> object:
    """Value of ``key`` (dotted), or a ConfigError naming it.

    Raises:
        ConfigError: the key is missing or null.
    """
    value = OmegaConf.select(cfg, key, default=None)
    if value is None:
        raise ConfigError(f"`{key}` must be set{': ' + hint if hint else ''}")
    return value


def _assets(name: str = "") -> str:
    return str(Path(__file__).parent / "assets" / name)


if not OmegaConf.has_resolver("hsftrain_assets"):
    OmegaConf.register_new_resolver("hsftrain_assets", _assets)
