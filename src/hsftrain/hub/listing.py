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
    """Models and presets as plain text fitted to ``width`` columns."""
    lines = ["Hub models (use the name in segmentation.models or finetuning.pretrained):", ""]
    name_w = max((len(m.name) for m in models), default=4)
    kind_w = max((len(m.kind) for m in models), default=4)
    lines.append(f"  {'name'.ljust(name_w)}  {'version':7}  {'kind'.ljust(kind_w)}  cached")
    for m in models:
        lines.append(
            f"  {m.name.ljust(name_w)}  {m.version:7}  {m.kind.ljust(kind_w)}  "
            + ("yes" if m.cached else "-")
        )
        lines += _wrap(m.description, width)
    lines += ["", "Segmentation presets (hsftrain segment segmentation=<name>):", ""]
    for p in presets:
        names = ", ".join(describe_spec(s) for s in p.models) or "(give segmentation.models)"
        lines.append(f"  {p.name}")
        lines += _wrap(p.description, width)
        lines += _wrap(f"models: {names}", width)
    return "\n".join(line if len(line) <= width else line[: width - 3] + "..." for line in lines)
