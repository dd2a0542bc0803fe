"""``hsftrain evaluate``: compare predicted label maps with reference segmentations.

:func:`evaluate` is what the CLI calls with the composed ``conf/evaluate.yaml``;
:func:`evaluate_files` is the same thing with typed arguments. Both pair files by subject
id (:mod:`hsftrain.evaluation.pairing`), compute :func:`~hsftrain.evaluation.metrics.label_metrics`
per subject with the reference's voxel spacing, and write into ``out``:

* ``metrics.csv``: one row per subject and label (:class:`~.report.LabelResult` columns;
  a class in neither image is marked absent, its metrics NaN);
* ``summary.csv``: mean, std, median of each metric per label, and how many subjects
  lack the class (:class:`~.report.MetricStats`);
* ``unpaired.csv``: files left without a partner (side, subject, path);
* ``boxplot_<metric>.png``: one box per label, for dice, hd95_mm, assd_mm, volume_similarity.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from hsftrain.config.compose import require
from hsftrain.config.values import plain
from hsftrain.core.errors import ConfigError
from hsftrain.evaluation.pairing import (
    DEFAULT_ID_REGEX,
    Pairing,
    Unpaired,
    find_files,
    pair_files,
    single_pair,
)
from hsftrain.evaluation.report import (
    RESULT_COLUMNS,
    STATS_COLUMNS,
    LabelResult,
    MetricStats,
    plot_boxplots,
    summarize,
    summary_table,
    write_csv,
)
from hsftrain.evaluation.scoring import (
    EvaluationError,
    PairFacts,
    evaluate_pair,
    load_label_map,
    report_facts,
)

__all__ = ["EvaluationError", "evaluate", "evaluate_files", "evaluate_pair", "load_label_map"]

log = logging.getLogger(__name__)

UNPAIRED_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Unpaired))

#: Name of the default output folder, created next to the predictions.
DEFAULT_OUT = "evaluation"


@dataclass
class EvaluationSummary:
    """What :func:`evaluate` computed and wrote."""

    out_dir: Path
    metrics_csv: Path
    summary_csv: Path
    unpaired_csv: Path
    plots: dict[str, Path]
    results: list[LabelResult]
    stats: list[MetricStats]
    subjects: list[str]
    unpaired_pred: list[Path] = field(default_factory=list)
    unpaired_ref: list[Path] = field(default_factory=list)

    def mean(self, metric: str, label: int) -> float:
        """Mean of ``metric`` for ``label`` over subjects (NaN ignored; NaN if absent)."""
        for s in self.stats:
            if s.metric == metric and s.label == label:
                return s.mean
        return math.nan


def parse_labels(value: object) -> dict[int, str] | None:
    """Normalise the ``labels`` option to ``{value: name}`` (None: labels present).

    Accepts a ``{value: name}`` mapping, a list of values (named ``label_<value>``), one
    integer, or a comma-separated string such as ``"1,2"``.

    Raises:
        ConfigError: anything else, or values that are not integers.
    """
    if value is None:
        return None
    if isinstance(value, DictConfig | Mapping):
        items = dict(plain(value))
    else:
        if isinstance(value, str):
            value = [v for v in value.replace(" ", "").split(",") if v]
        elif isinstance(value, int):
            value = [value]
        elif not isinstance(value, Sequence) and not OmegaConf.is_list(value):
            raise ConfigError(
                f"`labels` must be a list of values or a {{value: name}} mapping, got {value!r}"
            )
        items = {v: None for v in plain(value)}
    try:
        table = {int(k): (str(v) if v is not None else f"label_{int(k)}") for k, v in items.items()}
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"`labels` values must be integers, got {list(items)}: e.g. labels=[1,2] or "
            "labels={1:DG,2:CA1}"
        ) from err
    if not table:
        raise ConfigError("`labels` is empty: give values (labels=[1,2]) or null for all present")
    return dict(sorted(table.items()))


def parse_value_map(value: object, key: str) -> dict[int, int] | None:
    """Normalise ``pred_map`` / ``ref_map`` ({value: new value}; None: keep the values).

    Raises:
        ConfigError: not a mapping of integers to integers.
    """
    if value is None:
        return None
    items = plain(value)
    if not isinstance(items, Mapping) or not items:
        raise ConfigError(f"`{key}` must be a {{value: new value}} mapping, e.g. {key}={{17: 1}}")
    try:
        return {int(k): int(v) for k, v in items.items()}
    except (TypeError, ValueError) as err:
        raise ConfigError(f"`{key}` must map integers to integers, got {items!r}") from err


def default_out(preds: Sequence[Path]) -> Path:
    """``evaluation/`` in the folder holding the predictions (their common parent)."""
    return Path(os.path.commonpath([str(p.parent.resolve()) for p in preds])) / DEFAULT_OUT


@dataclass(frozen=True)
class EvaluationOptions:
    """What :func:`evaluate_files` compares and writes (the keys of ``hsftrain evaluate``).

    Attributes:
        labels: ``{value: name}`` or values to evaluate; None: every class of the
            prediction's model (:mod:`~hsftrain.evaluation.classes`) and every non-zero
            value present in either image of each pair.
        out: output folder; None: ``evaluation/`` next to the predictions.
        id_regex: subject id from a file name (:mod:`hsftrain.evaluation.pairing`).
        pattern: file pattern used inside a folder given as ``pred`` or ``ref``.
        surface: compute HD95 and ASSD (NaN in the outputs when false).
        plots: write the box plots.
        show: print the rich summary table.
        pred_map, ref_map: ``{value: new value}`` relabelling of the predictions /
            references before comparing (values not listed become background), e.g. to
            compare with another tool's label scheme.
    """

    labels: Mapping[int, str] | Sequence[int] | None = None
    out: str | Path | None = None
    id_regex: str = DEFAULT_ID_REGEX
    pattern: str = "*.nii*"
    surface: bool = True
    plots: bool = True
    show: bool = True
    pred_map: Mapping[int, int] | None = None
    ref_map: Mapping[int, int] | None = None


def evaluate_files(
    pred: str | Path, ref: str | Path, options: EvaluationOptions | None = None
) -> EvaluationSummary:
    """Evaluate every prediction against the reference of the same subject.

    Args:
        pred: folder (its files matching ``options.pattern``) or glob of predicted label
            maps; or one file, compared with the one file ``ref`` whatever their names.
        ref: folder or glob of reference segmentations, or one file.
        options: labels, output folder, pairing and outputs (:class:`EvaluationOptions`).

    Raises:
        FileNotFoundError: ``pred`` or ``ref`` matches no file.
        PairingError: no subject pairs, or two files of one side share an id.
        EvaluationError: a pair with different shapes, or an unreadable file.
    """
    o = options or EvaluationOptions()
    pairing = single_pair(pred, ref, o.id_regex)  # two named files: one pair, any names
    if pairing is None:
        preds = find_files(pred, o.pattern, "pred")
        refs = find_files(ref, o.pattern, "ref")
        pairing = pair_files(preds, refs, o.id_regex, pred_spec=str(pred), ref_spec=str(ref))
    pred_files = [p.pred for p in pairing.pairs]
    out_dir = Path(o.out).expanduser() if o.out is not None else default_out(pred_files)
    from hsftrain.config.checks import check_output_dir

    check_output_dir(out_dir, "out")  # a file there, or read-only: before any work

    from rich.progress import track

    table = parse_labels(o.labels)
    results: list[LabelResult] = []
    facts: list[PairFacts] = []
    for item in track(pairing.pairs, description="evaluating", transient=True, disable=not o.show):
        results.extend(evaluate_pair(item, table, o.surface, o.pred_map, o.ref_map, facts))
    report_facts(facts, results)
    summary = _write_summary(results, pairing, out_dir, o.plots)
    if o.show:
        from rich.console import Console

        Console().print(
            summary_table(summary.stats, title=f"Evaluation of {len(summary.subjects)} subjects")
        )
    log.info(
        "wrote %s, %s, %s and %d plots",
        summary.metrics_csv,
        summary.summary_csv.name,
        summary.unpaired_csv.name,
        len(summary.plots),
    )
    return summary


def _write_summary(
    results: list[LabelResult], pairing: Pairing, out_dir: Path, plots: bool
) -> EvaluationSummary:
    """Write ``metrics.csv``, ``summary.csv``, ``unpaired.csv`` (and the box plots) into
    ``out_dir``; the summary of what was written."""
    stats = summarize(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_csv = write_csv(results, RESULT_COLUMNS, out_dir / "metrics.csv")
    summary_csv = write_csv(stats, STATS_COLUMNS, out_dir / "summary.csv")
    unpaired_csv = write_csv(pairing.unpaired, UNPAIRED_COLUMNS, out_dir / "unpaired.csv")
    plot_paths = plot_boxplots(results, out_dir) if plots and results else {}
    return EvaluationSummary(
        out_dir=out_dir,
        metrics_csv=metrics_csv,
        summary_csv=summary_csv,
        unpaired_csv=unpaired_csv,
        plots=plot_paths,
        results=results,
        stats=stats,
        subjects=[p.subject for p in pairing.pairs],
        unpaired_pred=pairing.unpaired_pred,
        unpaired_ref=pairing.unpaired_ref,
    )


def evaluate(cfg: DictConfig) -> EvaluationSummary:
    """Run ``hsftrain evaluate`` from the composed ``conf/evaluate.yaml``.

    Raises:
        ConfigError: ``pred`` or ``ref`` unset, bad ``labels`` or ``id_regex``.
        FileNotFoundError, PairingError, EvaluationError: see :func:`evaluate_files`.
    """
    hint = "a folder or a glob of NIfTI label maps, e.g. {key}=preds/*_seg.nii.gz"
    pred = require(cfg, "pred", hint.format(key="pred"))
    ref = require(cfg, "ref", hint.format(key="ref"))
    out = OmegaConf.select(cfg, "out", default=None)
    options = EvaluationOptions(
        labels=parse_labels(OmegaConf.select(cfg, "labels", default=None)),
        out=str(out) if out is not None else None,
        id_regex=str(OmegaConf.select(cfg, "id_regex", default=None) or DEFAULT_ID_REGEX),
        pattern=str(OmegaConf.select(cfg, "pattern", default=None) or "*.nii*"),
        surface=bool(OmegaConf.select(cfg, "surface", default=True)),
        plots=bool(OmegaConf.select(cfg, "plots", default=True)),
        show=bool(OmegaConf.select(cfg, "show", default=True)),
        pred_map=parse_value_map(OmegaConf.select(cfg, "pred_map", default=None), "pred_map"),
        ref_map=parse_value_map(OmegaConf.select(cfg, "ref_map", default=None), "ref_map"),
    )
    return evaluate_files(str(pred), str(ref), options)
