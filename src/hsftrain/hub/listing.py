"""The text of ``hsftrain hub list``: one line per model or preset (name, version, kind,
cache state), its description wrapped below it, so that it reads at any terminal width."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from hsftrain.hub.catalog import ModelEntry, PresetEntry, describe_spec

INDENT = "      "


def _wrap(text: str, width: int) -> list[str]:
    return (
        textwrap.wrap(text, width, initial_indent=INDENT, subsequent_indent=INDENT) if text else []
    )


def listing(models: Sequence[ModelEntry], presets: Sequence[PresetEntry], width: int = 80) -> str:
    """Models and presets as plain text fitted to ``width`` columns: each column as wide as
    its longest value, so every row lines up; a line is wrapped, never cut."""
    lines = textwrap.wrap(
        "Hub models (use the name in segmentation.models or finetuning.pretrained):", width
    )
    lines.append("")
    name_w = max((len(m.name) for m in models), default=4)
    version_w = max((len(m.version) for m in models), default=7)
    kind_w = max((len(m.kind) for m in models), default=4)

    def row(name: str, version: str, kind: str, cached: str) -> str:
        return f"  {name.ljust(name_w)}  {version.ljust(version_w)}  {kind.ljust(kind_w)}  {cached}"

    lines.append(row("name", "version", "kind", "cached"))
    for m in models:
        lines.append(row(m.name, m.version, m.kind, "yes" if m.cached else "-"))
        lines += _wrap(m.description, width)
    lines.append("")
    lines += textwrap.wrap("Segmentation presets (hsftrain segment segmentation=<name>):", width)
    lines.append("")
    for p in presets:
        names = ", ".join(describe_spec(s) for s in p.models) or "(give segmentation.models)"
        lines.append(f"  {p.name}")
        lines += _wrap(p.description, width)
        lines += _wrap(f"models: {names}", width)
    return "\n".join(lines)
