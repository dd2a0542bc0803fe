"""Up-front checks shared by every command: typed config values and output paths.

:class:`Checker` and :func:`as_int` / :func:`as_float` / :func:`as_bool` /
:func:`choice` check the type and range of config keys before anything is read or
written, so that a zero batch size fails in a second with one line naming the key (the
keys of ``train`` / ``finetune``: :func:`hsftrain.training.validate.validate_training`).
:func:`check_output_dir` / :func:`check_output_file` refuse output paths that are files
(or folders), lie under a file, or cannot be written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hsftrain.config.keys import ABSENT, get_value
from hsftrain.core.errors import ConfigError


def invalid(key: str, value: Any, what: str) -> ConfigError:
    """The error for ``key=value``, which ``must be {what}``."""
    return ConfigError(f"`{key}`={value!r}: must be {what}")


def as_int(key: str, value: Any, low: int | None = None, what: str = "") -> int:
    """``value`` as an int (``2``, ``2.0``, ``"2"``) of at least ``low``.

    Raises:
        ConfigError: anything else (names ``key``).
    """
    out: int | None = None
    if isinstance(value, bool):
        out = None
    elif isinstance(value, int):
        out = value
    elif isinstance(value, float) and value.is_integer():
        out = int(value)
    elif isinstance(value, str):
        try:
            out = int(value.strip())
        except ValueError:
            out = None
    bound = f" >= {low}" if low is not None else ""
    if out is None or (low is not None and out < low):
        raise invalid(key, value, f"an integer{bound}{what}")
    return out


def as_float(
    key: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    what: str = "",
) -> float:
    """``value`` as a finite float within the given bounds.

    Raises:
        ConfigError: not a number, not finite, or out of range (names ``key``).
    """
    out: float | None = None
    if not isinstance(value, bool):
        try:
            out = float(value)
        except (TypeError, ValueError):
            out = None
    ok = out is not None and math.isfinite(out)
    if ok and low is not None:
        ok = out > low if low_open else out >= low  # type: ignore[operator]
    if ok and high is not None:
        ok = out < high if high_open else out <= high  # type: ignore[operator]
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        bounds = " and ".join(b for b in (lo, hi) if b)
        raise invalid(key, value, f"a finite number{' ' + bounds if bounds else ''}{what}")
    return out  # type: ignore[return-value]


def as_bool(key: str, value: Any) -> bool:
    """``value`` as a bool (true/false).

    Raises:
        ConfigError: anything else.
    """
    if isinstance(value, bool):
        return value
    raise invalid(key, value, "true or false")


class Checker:
    """Applies checks to the keys present in a config (absent keys keep their defaults)."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def __call__(self, key: str, check: Callable[[str, Any], Any], optional: bool = False) -> Any:
        value = get_value(self.cfg, key)
        if value is ABSENT or (optional and value is None):
            return None
        return check(key, value)


def choice(options: Iterable[str]) -> Callable[[str, Any], str]:
    """A check that a value is one of ``options`` (returned as a string)."""
    allowed = list(options)

    def check(key: str, value: Any) -> str:
        if str(value) not in allowed:
            raise invalid(key, value, f"one of {', '.join(allowed)}")
        return str(value)

    return check


def check_output_dir(path: str | os.PathLike[str], key: str) -> Path:
    """Check that ``path`` is, or can be created as, a writable folder (nothing is created).

    Raises:
        ConfigError: ``path`` is a file, lies below a file, or its first existing parent
            is not writable.
    """
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"`{key}`={out} is a file, not a folder: give a folder path")
    _check_writable(out, key)
    return out


def check_output_file(path: str | os.PathLike[str], key: str, example: str = "") -> Path:
    """Check that ``path`` can be written as a file (nothing is created).

    Raises:
        ConfigError: ``path`` is a folder, lies below a file, or cannot be written.
    """
    out = Path(path).expanduser()
    if out.is_dir():
        hint = f", e.g. {key}={out / example}" if example else ""
        raise ConfigError(f"`{key}`={out} is a folder: give a file name{hint}")
    if out.exists() and not os.access(out, os.W_OK):
        raise ConfigError(f"`{key}`={out} is read-only: choose another file or fix permissions")
    _check_writable(out.parent, key)
    return out


def _check_writable(folder: Path, key: str) -> None:
    """The first existing ancestor of ``folder`` must be a writable folder."""
    probe = folder.absolute()
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(
            f"`{key}`={folder}: {probe} is a file, so no folder can be created below it; "
            "give another path"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(
            f"`{key}`={folder}: {probe} is not writable; choose a folder you can write to"
        )
