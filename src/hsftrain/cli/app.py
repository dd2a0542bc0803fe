"""The ``hsftrain`` command line: a thin typer layer over the typed Python API.

Every command composes a packaged Hydra config (``conf/<name>.yaml``) with the user's
``key=value`` overrides and calls one API function. Heavy modules are imported lazily, so
``hsftrain --help`` is fast and ``segment`` never imports Lightning.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Annotated

import typer
from omegaconf import DictConfig, OmegaConf

from hsftrain.cli.loop import register as register_loop_commands
from hsftrain.config.compose import CONF_DIR, compose, group_options
from hsftrain.core.errors import Terminated, UserError, is_out_of_memory, sigterm_unwinds
from hsftrain.core.logs import setup_logging
from hsftrain.hub.fetch import CACHE_LOCATION, DownloadError

app = typer.Typer(
    help=(
        "hsftrain: train, fine-tune, export and run hippocampal-subfield segmentation models.\n\n"
        "Each command takes Hydra-style overrides, e.g.\n\n"
        "  hsftrain train datasets=sample models.hparams.f_maps=16 lightning.max_epochs=5\n\n"
        "Add --cfg job to print the composed configuration without running."
    ),
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
data_app = typer.Typer(
    help="Data utilities: write a dataset config for a folder, prepare the training cache, "
    "write synthetic phantoms.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")
hub_app = typer.Typer(
    help="Model hub: list the published models and presets, fetch them ahead (offline nodes).",
    no_args_is_help=True,
)
app.add_typer(hub_app, name="hub")
volumes_app = typer.Typer(
    help="Volumes tables of hsftrain segment: merge the tables of a sharded run.",
    no_args_is_help=True,
)
app.add_typer(volumes_app, name="volumes")


def _print_version(value: bool) -> None:
    if value:
        from hsftrain import __version__

        typer.echo(f"hsftrain {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    pass


Overrides = Annotated[
    list[str] | None, typer.Argument(help="Hydra overrides: key=value, group=option.")
]
ShowCfg = Annotated[
    str | None, typer.Option("--cfg", help="Print the composed config ('job') and exit.")
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]


def _groups_help(config_name: str) -> str:
    text = (CONF_DIR / f"{config_name}.yaml").read_text()
    groups = {k: v for k, v in group_options().items() if f"- {k}:" in text or f"{k}:" in text}
    lines = [f"  {g}: {', '.join(opts)}" for g, opts in groups.items()]
    if not lines:
        return ""
    return "\n\nConfig groups (choose with group=option):\n\n" + "\n\n".join(lines)


def _run(
    config_name: str,
    overrides: list[str] | None,
    show_cfg: str | None,
    verbose: bool,
    call: Callable[[DictConfig], object],
) -> None:
    setup_logging(verbose)
    with _user_errors(verbose):
        cfg = compose(config_name, overrides or [])
        if show_cfg:
            typer.echo(OmegaConf.to_yaml(cfg, resolve=False))
            return
        call(cfg)


#: Operating-system errors that name a path the user gave (missing, a file where a folder
#: is needed, read-only, ...): one line, like :class:`UserError`.
_PATH_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def _raised_by_hsftrain(err: BaseException) -> bool:
    """Whether ``err`` was raised by a ``raise`` in hsftrain's own code (a message written
    for the user), rather than deep inside a library (a bug to report)."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).startswith("hsftrain.")


@contextlib.contextmanager
def _user_errors(verbose: bool) -> Iterator[None]:
    """Errors whose message tells the user what to fix (:class:`UserError`, path errors,
    ``ValueError`` raised by hsftrain itself): one log line and the error's exit status
    (``--verbose``: the traceback). Anything else is an internal error: its traceback is
    kept, with a line saying what to try (smaller batches for out-of-memory errors)."""
    log = logging.getLogger("hsftrain")
    try:
        with sigterm_unwinds():  # SIGTERM outside a command's own stop points: as Ctrl+C
            yield
    except KeyboardInterrupt as err:
        terminated = isinstance(err, Terminated)
        log.error("interrupted (%s): stopped before the end", "SIGTERM" if terminated else "Ctrl+C")
        sys.exit(143 if terminated else 130)
    except (UserError, *_PATH_ERRORS, DownloadError) as err:
        if verbose:
            raise
        log.error("%s", " ".join(str(err).split()) if isinstance(err, _PATH_ERRORS) else err)
        sys.exit(getattr(err, "exit_code", 1))
    except ValueError as err:
        if verbose:
            raise
        if not _raised_by_hsftrain(err):
            _internal(log, err)
            raise
        log.error("%s", err)
        sys.exit(1)
    except Exception as err:
        _internal(log, err)
        raise


def _internal(log: logging.Logger, err: BaseException) -> None:
    """Say what an unexpected error is before its traceback is shown."""
    if is_out_of_memory(err):
        log.error(
            "out of memory (%s): try a smaller datasets.batch_size or datasets.patch_size "
            "(train, finetune), hardware.engine_settings.batch_size=1 or fewer models/"
            "test_time_num_aug (segment), or a machine with more memory; traceback below",
            type(err).__name__,
        )
    else:
        log.error(
            "internal error (%s: %s): this is a bug in hsftrain or a library, not a "
            "problem with your input; please report it with the traceback below",
            type(err).__name__,
            err,
        )


def _command(
    name: str,
    config_name: str,
    summary: str,
    target: str,
    parent: typer.Typer = app,
    prepare: Callable[[list[str]], list[str]] | None = None,
) -> None:
    """Register ``hsftrain [<parent>] <name>`` calling ``module:function(cfg)`` from
    ``target``; ``prepare`` turns the command's words (its unknown options included) into
    overrides."""

    def command(overrides: Overrides = None, cfg: ShowCfg = None, verbose: Verbose = False) -> None:
        module, function = target.split(":")

        def call(c: DictConfig) -> object:
            import importlib

            return getattr(importlib.import_module(module), function)(c)

        if prepare is not None:
            setup_logging(verbose)
            with _user_errors(verbose):
                overrides = prepare(overrides or [])
        _run(config_name, overrides, cfg, verbose, call)

    command.__doc__ = summary + _groups_help(config_name)
    from hsftrain.cli.help import keys_help_command

    settings = {"allow_extra_args": False, "ignore_unknown_options": prepare is not None}
    parent.command(name, context_settings=settings, cls=keys_help_command(config_name))(command)


def _bids_app(words: list[str]) -> list[str]:
    from hsftrain.inference.bids_app import bids_app_overrides

    return bids_app_overrides(words)


_command(
    "train",
    "config",
    "Train a model from scratch on the configured datasets (checkpoints, ONNX export).",
    "hsftrain.workflow:train",
)
_command(
    "plan",
    "config",
    "Plan a training run for budget=<time> on this machine (network, batch, epochs) and "
    "write plan_path (default ./plan.yaml) without training; then: hsftrain train plan=<file>.",
    "hsftrain.training.plan:plan",
)
_command(
    "finetune",
    "config",
    "Fine-tune a pretrained model (finetuning.pretrained): new head, gradual unfreezing.",
    "hsftrain.workflow:finetune",
)
_command(
    "export",
    "export",
    "Export a checkpoint to ONNX (verified against PyTorch), optionally int8-quantized.",
    "hsftrain.export.api:export",
)
_command(
    "segment",
    "segment",
    "Segment every MRI matching files.path/files.pattern with ONNX models (HSF workflow).\n\n"
    "A BIDS dataset, as a BIDS App: hsftrain segment BIDS_DIR OUTPUT_DIR participant "
    "[--participant-label 01 02] [--session-label A] key=value... (the same as "
    "files.bids=true files.path=BIDS_DIR files.output_dir=OUTPUT_DIR "
    "files.participant_label=[01,02] files.session_label=[A]).",
    "hsftrain.report.api:segment_and_report",  # segment, then its QC report
    prepare=_bids_app,
)
_command(
    "evaluate",
    "evaluate",
    "Compare predictions with references: Dice, HD95, ASSD, volume similarity per label.",
    "hsftrain.evaluation.api:evaluate",
)

_command(
    "prepare",
    "config",
    "Read, check and normalise every subject of the datasets once, into the prepared-data "
    "cache that training reads (datasets.cache_dir); training does it too when needed.",
    "hsftrain.data.cache:prepare_datasets",
    parent=data_app,
)


@data_app.command("synth")
def synth(
    out: Annotated[str, typer.Option(help="Output folder.")],
    n: Annotated[int, typer.Option(help="Number of subjects.")] = 20,
    shape: Annotated[str, typer.Option(help="Volume shape XxYxZ.")] = "32x40x32",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    verbose: Verbose = False,
) -> None:
    """Write synthetic hippocampus-like phantoms with subfield labels
    (<id>_img.nii.gz / <id>_lbl.nii.gz), usable with datasets=synth or datasets=folder."""
    setup_logging(verbose)
    with _user_errors(verbose):
        dims = _synth_options(out, n, shape)
        from hsftrain.data.synth import write_phantoms

        paths = write_phantoms(out, n=n, shape=dims, seed=seed)
        logging.getLogger("hsftrain").info("wrote %d phantoms to %s", len(paths), out)


@data_app.command("init")
def data_init(
    folder: Annotated[str, typer.Argument(help="Folder of images with their label maps.")],
    out: Annotated[str, typer.Option(help="Dataset config to write (.yaml).")] = "dataset.yaml",
    force: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    verbose: Verbose = False,
) -> None:
    """Write a dataset config for a folder of image / label map pairs (patterns, label
    values with their voxel counts, names to fill in): use it as datasets=<out>."""
    setup_logging(verbose)
    with _user_errors(verbose):
        from hsftrain.data.init import init_dataset

        init_dataset(folder, out, force)


def _synth_options(out: str, n: int, shape: str) -> tuple[int, int, int]:
    """Check ``data synth``'s options before anything is written.

    Raises:
        ConfigError: ``--n`` below 1, a ``--shape`` that is not three sizes >= 8, or an
            ``--out`` that is an existing file or cannot be created.
    """
    from hsftrain.config.checks import check_output_dir
    from hsftrain.config.compose import ConfigError

    if n < 1:
        raise ConfigError(f"--n {n}: give the number of phantoms to write, at least 1")
    try:
        dims = tuple(int(s) for s in shape.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 8:
        raise ConfigError(
            f"--shape {shape!r}: give three sizes of at least 8 voxels as XxYxZ, e.g. 32x40x32"
        )
    check_output_dir(out, "--out")
    return dims


CacheDir = Annotated[
    str | None,
    typer.Option("--cache-dir", help=f"Model cache (default: {CACHE_LOCATION})."),
]


@hub_app.command("list")
def hub_list(cache_dir: CacheDir = None) -> None:
    """List the hub's models (with their cache state) and the segmentation presets."""
    import shutil

    from hsftrain.hub.catalog import models, presets
    from hsftrain.hub.listing import listing

    width = min(shutil.get_terminal_size((80, 24)).columns, 120)
    typer.echo(listing(models(cache_dir), presets(), width))


@hub_app.command("fetch")
def hub_fetch(
    names: Annotated[list[str], typer.Argument(help="Hub model names and/or preset names.")],
    cache_dir: CacheDir = None,
    verbose: Verbose = False,
) -> None:
    """Download and verify models ahead of time (e.g. on a login node with internet)."""
    setup_logging(verbose)
    from hsftrain.hub.catalog import fetch_ahead

    with _user_errors(verbose):
        for name, path in fetch_ahead(names, cache_dir):
            logging.getLogger("hsftrain").info("%s: %s (verified)", name, path)


@volumes_app.command("merge")
def volumes_merge(
    folder: Annotated[str, typer.Argument(help="Folder holding volumes.<i>-of-<N>.csv.")],
    out: Annotated[
        str | None, typer.Option("--out", help="Merged table (default: DIR/volumes.csv).")
    ] = None,
    table: Annotated[
        str | None,
        typer.Option("--table", help="Which run's tables when DIR holds several (e.g. volumes)."),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Merge the tables of a sharded segment run (files.shard=i/N) into volumes.csv."""
    setup_logging(verbose)
    with _user_errors(verbose):
        from hsftrain.inference.shards import merge_volumes

        merge_volumes(folder, out, table)


register_loop_commands(data_app, hub_app, _user_errors, app)  # report, collect, publish
