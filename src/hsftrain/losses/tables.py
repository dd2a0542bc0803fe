"""The group tables of a run's forgiving loss: one per dataset, and one per distinct
(dataset, lacking classes) pair of subjects whose label maps lack some of their dataset's
classes (:attr:`hsftrain.data.subjects.Discovery.lacking_tables`)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from hsftrain.data.labels import group_table, without_classes

#: ``{table index: (dataset index, lacking label values)}``
LackingTables = Mapping[int, tuple[int, tuple[int, ...]]]


def dataset_tables(
    class_names: list[str],
    dataset_classes: Mapping[int, list[str]],
    dataset_ca: Mapping[int, str],
    forgiving: bool,
    lacking: LackingTables | None = None,
) -> dict[int, np.ndarray]:
    """Group table per dataset: granularity-aware when ``forgiving``, else the identity.

    With ``lacking``, also the table of each (dataset, lacking classes) pair: forgiving,
    its dataset's with the lacking classes merged into background
    (:func:`hsftrain.data.labels.without_classes`); else its dataset's (the lacking
    classes are trained as background).

    Raises:
        LabelError: a dataset class that the model cannot produce.
        ValueError: without the forgiving loss, a dataset with more classes than the model.
    """
    tables = {}
    for d, names in dataset_classes.items():
        if forgiving:
            tables[d] = group_table(class_names, names, dataset_ca[d])
        else:
            if len(names) > len(class_names):
                raise ValueError(
                    f"dataset {d} has {len(names)} classes but the model {len(class_names)}: "
                    "raise models.hparams.out_channels or use the forgiving loss"
                )
            tables[d] = np.eye(len(class_names), dtype=np.float32)
    for t, (d, values) in (lacking or {}).items():
        tables[t] = without_classes(tables[d], values) if forgiving else tables[d].copy()
    return tables
