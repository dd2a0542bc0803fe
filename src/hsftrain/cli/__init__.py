"""The ``hsftrain`` command line: a thin typer layer over the typed Python API.

``app.py`` holds the application and the workflow's commands, ``loop.py`` the retraining
loop's (``report``, ``data collect``, ``hub publish``), ``help.py`` the config keys listed by
``--help``. The console script is ``hsftrain.cli:app``.
"""

from hsftrain.cli.app import app

__all__ = ["app"]
