"""``--help`` of the config commands: typer's help, then every config key with its default
and description (read from the packaged YAML comments by :mod:`hsftrain.config.keydocs`)."""

from __future__ import annotations

import shutil
import textwrap
from typing import Any

import typer
from typer.core import TyperCommand

from hsftrain.config.keydocs import key_docs


def keys_text(config_name: str, width: int | None = None) -> str:
    """The key listing of a command: ``key = default`` then its description, wrapped to
    ``width`` (the terminal's, at most 100)."""
    width = width or min(shutil.get_terminal_size((80, 24)).columns, 100)
    lines = ["Keys (override with key=value; an unknown key is an error):", ""]
    for doc in key_docs(config_name):
        head = f"  {doc.key} = {doc.default}"
        lines.append(head if len(head) <= width else head[: width - 3] + "...")
        if doc.description:
            lines += textwrap.wrap(
                doc.description, width, initial_indent="      ", subsequent_indent="      "
            )
    return "\n".join(lines)


class KeysHelpCommand(TyperCommand):
    """A typer command whose ``--help`` ends with the keys of ``config_name``."""

    config_name = "config"

    def format_help(self, ctx: Any, formatter: Any) -> None:
        super().format_help(ctx, formatter)
        text = keys_text(self.config_name)
        if formatter.getvalue():  # plain click formatting: keep the order
            formatter.write("\n" + text + "\n")
        else:  # typer printed its rich help already
            typer.echo("\n" + text)


def keys_help_command(config_name: str) -> type[KeysHelpCommand]:
    """A :class:`KeysHelpCommand` class for ``conf/<config_name>.yaml``."""
    return type(f"KeysHelp_{config_name}", (KeysHelpCommand,), {"config_name": config_name})
