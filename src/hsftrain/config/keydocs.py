"""Every key of a command's config, with its default and the description written next to
it in the packaged YAML (``key: value  # description``).

The descriptions are read from the YAML comments, so a key added to a config file is
listed by ``hsftrain <command> --help`` without any code change. A comment on the lines
just above a key (not at the top of a file) or on the indented lines just below it also
describes it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hsftrain.config.compose import COLLAPSED, CONF_DIR, compose
from hsftrain.config.values import leaves

_KEY = re.compile(
    r"^(?P<indent>\s*)(?:-\s+)?(?P<key>[A-Za-z_][\w./-]*|\"[^\"]+\")\s*:(?P<rest>.*)$"
)


@dataclass(frozen=True)
class KeyDoc:
    """One config key: dotted name, default (as YAML text) and description."""

    key: str
    default: str
    description: str


def _split_comment(text: str) -> tuple[str, str]:
    """``value  # comment`` -> (value, comment), ignoring ``#`` inside quotes."""
    quote = ""
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip(), text[i + 1 :].strip()
    return text.rstrip(), ""


def yaml_comments(path: Path) -> dict[str, str]:
    """``{dotted key: description}`` from the comments of one YAML file."""
    docs: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    last_key = ""
    last_indent = -1
    seen_key = False
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped:
            pending = []
            continue
        if stripped.startswith("#"):
            indent = len(line) - len(line.lstrip())
            comment = stripped.lstrip("#").strip()
            if last_key and indent > last_indent and not pending:
                docs[last_key] = f"{docs.get(last_key, '')} {comment}".strip()
            elif seen_key:
                pending.append(comment)
            continue
        match = _KEY.match(line)
        if not match:
            last_key = ""
            continue
        indent = len(match["indent"])
        key = match["key"].strip('"')
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        dotted = ".".join(k for _, k in stack)
        value, comment = _split_comment(match["rest"])
        if comment or pending:
            docs[dotted] = comment or " ".join(pending)
        if value.strip().startswith("{") and dotted in docs:  # flow mapping: its entries too
            for entry in yaml.safe_load(value) or {}:
                docs.setdefault(f"{dotted}.{entry}", docs[dotted])
        pending = []
        last_key, last_indent, seen_key = dotted, indent, True
    return docs


def _defaults(config_name: str) -> dict[str, str]:
    """``{group: option}`` of the defaults list of ``conf/<config_name>.yaml``."""
    data = yaml.safe_load((CONF_DIR / f"{config_name}.yaml").read_text()) or {}
    out: dict[str, str] = {}
    for entry in data.get("defaults") or []:
        if isinstance(entry, Mapping):
            for group, option in entry.items():
                out[str(group)] = str(option)
    return out


def descriptions(config_name: str) -> dict[str, str]:
    """Descriptions of every documented key of a command (its file and default groups)."""
    docs = yaml_comments(CONF_DIR / f"{config_name}.yaml")
    for group, option in _defaults(config_name).items():
        path = CONF_DIR / group / f"{option}.yaml"
        if path.is_file():
            docs.update({f"{group}.{k}": v for k, v in yaml_comments(path).items()})
    return docs


def _show(value: Any) -> str:
    if isinstance(value, Mapping) and value:
        return "{...}"
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def key_docs(config_name: str) -> list[KeyDoc]:
    """Every key of ``conf/<config_name>.yaml`` composed with its default groups.

    Raises:
        ConfigError: the packaged config does not compose (a broken installation).
    """
    from omegaconf import OmegaConf

    cfg = compose(config_name, [])
    plain = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    docs = descriptions(config_name)
    rows = []
    for key, value in leaves(plain, "", COLLAPSED):
        rows.append(KeyDoc(key, _show(value), docs.get(key, "")))
    return rows
