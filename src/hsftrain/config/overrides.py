"""Command-line overrides as users type them, checked before Hydra sees them.

* Values of path and glob keys (``files.path``, ``files.pattern``, ``ckpt``, ``out`` ...,
  see :data:`PATH_KEYS`) are taken literally: a leading ``~`` is expanded, and brackets,
  spaces or quotes are quoted for Hydra, so ``files.pattern=hippocampus_2[0-9]*.nii.gz``
  (the shell removed the user's quotes) and ``files.path=~/data`` work.
* Anything else Hydra cannot parse is refused with one line naming the argument and
  showing the quoting that works.
* Adding a key that the config does not have (``+key=value``) is refused, except inside
  the mappings meant to grow (:data:`OPEN_MAPPINGS`): strict keys, so that a typo is an
  error rather than a silent new key.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

from hsftrain.core.errors import ConfigError

#: Last components of keys whose values are file paths, folders or globs.
PATH_KEYS: frozenset[str] = frozenset(
    {
        "path",
        "pattern",
        "main_path",
        "output_path",
        "output_dir",
        "out",
        "ckpt",
        "pred",
        "ref",
        "resume",
        "split_file",
        "volumes_csv",
        "mask_pattern",
        "template",
        "cache_dir",
        "models_path",
        "model_paths",
        "pretrained",
        "mri",
        "label",
        "t2_pattern",
        "t2_model_paths",
    }
)
#: Mappings whose keys are the user's to choose: ``+prefix.new_key=value`` is accepted.
OPEN_MAPPINGS: tuple[str, ...] = ("datasets.datasets.", "segmentation.models.")
#: Values Hydra must keep reading as they are (not quoted into strings).
_LITERALS = frozenset({"null", "~"})
_LIST_OR_DICT = re.compile(r"^\s*(\[.*\]|\{.*\})\s*$", re.S)
_SIMPLE_LIST = re.compile(r"^\[([^\[\]{}'\"]*)\]$", re.S)


def _parser() -> Any:  # hydra's OverridesParser (hydra is imported lazily)
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _parse_error(item: str) -> str | None:
    """First line of Hydra's complaint about ``item``, or None when it parses."""
    from hydra.errors import HydraException

    try:
        _parser().parse_override(item)
    except HydraException as err:
        return str(err).strip().splitlines()[0]
    return None


def _expand(value: str) -> str:
    return os.path.expanduser(value) if value.startswith("~") else value


def _quote(value: str) -> str:
    """``value`` as a single-quoted Hydra string (taken literally)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _is_quoted(value: str) -> bool:
    return len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""


def path_value(value: str) -> str:
    """A path or glob value as Hydra must read it: ``~`` expanded, quoted when needed.

    Lists of plain paths (``[~/a.onnx, b.onnx]``) get each element expanded and quoted;
    other lists and mappings, ``null`` and quoted values are left as they are.
    """
    stripped = value.strip()
    if stripped in _LITERALS or _is_quoted(stripped):
        if _is_quoted(stripped) and stripped[1:].startswith("~"):
            return _quote(_expand(stripped[1:-1]))
        return value
    simple = _SIMPLE_LIST.match(stripped)
    if simple:
        items = [s.strip() for s in simple.group(1).split(",") if s.strip()]
        return "[" + ",".join(_quote(_expand(s)) for s in items) + "]"
    if _LIST_OR_DICT.match(stripped):
        return value
    expanded = _expand(value)
    if expanded != value or _parse_error(f"k={expanded}") or any(c.isspace() for c in expanded):
        return _quote(expanded)
    return expanded


def _bare(key: str) -> str:
    return key.lstrip("+~")


def is_path_key(key: str) -> bool:
    """Whether ``key`` (dotted) holds a path or a glob."""
    return _bare(key).rsplit(".", 1)[-1] in PATH_KEYS


def prepare(overrides: Sequence[str]) -> list[str]:
    """The overrides as Hydra must read them (see the module docstring).

    Raises:
        ConfigError: an override Hydra cannot parse (names it and shows the quoting).
    """
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and is_path_key(key):
            item = f"{key}={path_value(value)}"
        problem = _parse_error(item)
        if problem:
            shown = value.replace("'", "\\'")
            raise ConfigError(
                f"cannot read the override {item!r} ({problem}): quote the value for hsftrain "
                f"inside the shell's quotes, e.g. \"{key}='{shown}'\""
            )
        out.append(item)
    return out


def check_additions(overrides: Iterable[str], command: str) -> None:
    """Refuse ``+key=value`` / ``++key=value`` outside :data:`OPEN_MAPPINGS`.

    Raises:
        ConfigError: names the key and how to find the valid ones.
    """
    for item in overrides:
        key = item.partition("=")[0]
        if not key.startswith("+"):
            continue
        bare = _bare(key)
        if any(bare.startswith(prefix) for prefix in OPEN_MAPPINGS):
            continue
        raise ConfigError(
            f"{item}: `{bare}` is not a key of hsftrain {command} and new keys are refused "
            f"(strict config); see `hsftrain {command} --help` for the keys"
        )


def unknown_key_message(key: str, known: Iterable[str], command: str) -> str:
    """One line saying ``key`` does not exist, with the closest known keys."""
    known = list(known)
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    if not close:
        last = key.rsplit(".", 1)[-1]
        close = [k for k in known if k.rsplit(".", 1)[-1] == last][:3]
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return (
        f"`{key}` is not a key of hsftrain {command}: {hint}"
        f"(`hsftrain {command} --help` lists the keys)"
    )
