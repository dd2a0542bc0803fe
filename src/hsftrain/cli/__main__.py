"""``python -m hsftrain.cli``: the ``hsftrain`` command."""

from hsftrain.cli.app import app

app()
