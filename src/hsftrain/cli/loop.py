"""The retraining loop's commands: ``hsftrain report``, ``hsftrain data collect`` and
``hsftrain hub publish``.

Registered by :mod:`hsftrain.cli.app` on the app and its ``data`` and ``hub`` groups
(:func:`register`); each command sets up logging, turns user errors into one line (the
``user_errors`` context manager the CLI passes) and calls one API function.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Annotated

import typer

from hsftrain.core.logs import setup_logging

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]
SegDir = Annotated[str, typer.Argument(help="Output folder of hsftrain segment.")]
Images = Annotated[
    str | None,
    typer.Option(help="segment's files.path (crop inputs not beside their outputs)."),
]
UserErrors = Callable[[bool], contextlib.AbstractContextManager[None]]


def register(
    data_app: typer.Typer, hub_app: typer.Typer, user_errors: UserErrors, app: typer.Typer
) -> None:
    """Add ``report`` to ``app``, ``collect`` to ``data_app`` and ``publish`` to ``hub_app``."""
    _register_report(app, user_errors)
    _register_collect(data_app, user_errors)
    _register_publish(hub_app, user_errors)


def _register_report(app: typer.Typer, user_errors: UserErrors) -> None:
    """``hsftrain report``."""

    @app.command("report")
    def report(
        seg_dir: SegDir,
        out: Annotated[
            str | None, typer.Option(help="Page to write (default: SEG_DIR/report.html).")
        ] = None,
        images: Images = None,
        verbose: Verbose = False,
    ) -> None:
        """Write a cohort QC report (report.html + report_assets/, opens offline): volumes,
        outlier marks (most likely wrong first), QC figures, a niivue viewer per crop and
        ratings saved as qc_ratings.tsv for hsftrain data collect."""
        setup_logging(verbose)
        with user_errors(verbose):
            from hsftrain.report.api import report as write_report

            write_report(seg_dir, out, images)


def _register_collect(data_app: typer.Typer, user_errors: UserErrors) -> None:
    """``hsftrain data collect``."""

    @data_app.command("collect")
    def data_collect(
        seg_dir: SegDir,
        ratings: Annotated[str, typer.Option(help="Ratings file (qc_ratings.tsv).")],
        out: Annotated[str | None, typer.Option(help="Training folder to write.")] = None,
        corrected: Annotated[
            str | None, typer.Option(help="Folder of corrected label maps (fix ratings).")
        ] = None,
        images: Images = None,
        init_ratings: Annotated[
            bool, typer.Option(help="Write --ratings listing every crop rated pass, then stop.")
        ] = False,
        overwrite: Annotated[
            bool, typer.Option(help="Replace files of --out whose content differs.")
        ] = False,
        verbose: Verbose = False,
    ) -> None:
        """Collect rated segmentations into a training folder (<id>_img.nii.gz /
        <id>_lbl.nii.gz and manifest.tsv) for datasets=folder datasets.path=<out>: pass ->
        the prediction, fix -> the corrected label (--corrected), fail -> left out."""
        setup_logging(verbose)
        with user_errors(verbose):
            from hsftrain.collect import api
            from hsftrain.collect.outputs import CollectError

            if init_ratings:
                api.init_ratings(seg_dir, ratings, images)
                return
            if out is None:
                raise CollectError("--out: give the training folder to write")
            api.collect(seg_dir, ratings, out, corrected, images, overwrite)


def _register_publish(hub_app: typer.Typer, user_errors: UserErrors) -> None:
    """``hsftrain hub publish``."""

    @hub_app.command("publish")
    def hub_publish(
        source: Annotated[str, typer.Argument(help="A run directory or an .onnx file.")],
        url: Annotated[str | None, typer.Option(help="Where the model file is uploaded.")] = None,
        license: Annotated[str | None, typer.Option(help="The model's licence.")] = None,
        out: Annotated[
            str | None, typer.Option(help="Folder to write into (default: beside the model).")
        ] = None,
        name: Annotated[
            str | None, typer.Option(help="Model name (default: run or file name).")
        ] = None,
        description: Annotated[str | None, typer.Option(help="One line on the model.")] = None,
        intended_use: Annotated[str | None, typer.Option(help="The card's intended use.")] = None,
        overwrite: Annotated[
            bool, typer.Option(help="Replace a preset or card whose content differs.")
        ] = False,
        segmentation: Annotated[
            str | None,
            typer.Option(help="A packaged preset that runs it (named in the card; its metadata)."),
        ] = None,
        verbose: Verbose = False,
    ) -> None:
        """Write a segmentation preset (<stem>.preset.yaml: url or path + xxh3_64, for
        hsftrain segment segmentation=<it>) and a model card (<stem>.card.md)."""
        setup_logging(verbose)
        with user_errors(verbose):
            from hsftrain.hub.publish import PublishOptions, publish

            options = PublishOptions(
                url, license, out, name, description, intended_use, overwrite, segmentation
            )
            publish(source, options)
