"""Logging through ``logging`` + rich."""

from __future__ import annotations

import logging


def setup_logging(verbose: bool = False) -> None:
    """Route ``hsftrain`` logs through a rich handler (INFO, or DEBUG when verbose)."""
    from rich.logging import RichHandler

    root = logging.getLogger("hsftrain")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        handler = RichHandler(show_path=False, rich_tracebacks=verbose, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
        root.propagate = False
