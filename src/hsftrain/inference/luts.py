"""Label look-up tables written next to the segmentations, so that a viewer shows names.

* :func:`itksnap_text`: an ITK-SNAP label description file (File > Import Label
  Descriptions; ``IDX R G B A VIS MSH "LABEL"`` per line, ``#`` comments).
* :func:`freesurfer_text`: a FreeSurfer colour LUT (``freeview -v seg.nii.gz:colormap=lut:
  lut=<file>``; ``No. Label-Name R G B A`` per line, ``A`` 0 for opaque).
* :func:`dseg_tsv`: the BIDS ``dseg.tsv`` (``index name abbreviation color``).

Colours are those of the QC figures (:data:`hsftrain.inference.writer.QC_COLOURS`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from hsftrain.inference.writer import QC_COLOURS


def classes(names: Sequence[str]) -> list[tuple[int, str, tuple[int, int, int]]]:
    """``(value, name, (r, g, b))`` of each named foreground class, colours in 0..255."""
    out = []
    for value, name in enumerate(names):
        if value == 0 or not name:
            continue
        rgb = QC_COLOURS[(value - 1) % len(QC_COLOURS)]
        out.append((value, str(name), (int(rgb[0] * 255), int(rgb[1] * 255), int(rgb[2] * 255))))
    return out


def abbreviation(name: str) -> str:
    """``dentate gyrus`` -> ``DG``, ``CA1`` -> ``CA1``, ``subiculum`` -> ``SUBICULUM``."""
    words = [w for w in re.split(r"[^A-Za-z0-9]+", name) if w]
    if len(words) > 1:
        return "".join(w[0] for w in words).upper()
    return (words[0] if words else name).upper()


def itksnap_text(names: Sequence[str]) -> str:
    lines = [
        "# ITK-SnAP Label Description File (hsftrain segment)",
        "# Fields: IDX -R- -G- -B- -A- VIS MSH LABEL",
        '    0     0    0    0        0  0  0    "Clear Label"',
    ]
    for value, name, (r, g, b) in classes(names):
        label = name.replace('"', "'")
        lines.append(f'{value:5d} {r:5d} {g:4d} {b:4d}        1  1  1    "{label}"')
    return "\n".join(lines) + "\n"


def freesurfer_text(names: Sequence[str]) -> str:
    lines = ["#No. Label-Name                      R   G   B   A", "0   Unknown  0   0   0   0"]
    for value, name, (r, g, b) in classes(names):
        label = re.sub(r"\s+", "-", name.strip())
        lines.append(f"{value:<3d} {label:<30s} {r:3d} {g:3d} {b:3d}   0")
    return "\n".join(lines) + "\n"


def dseg_tsv(names: Sequence[str]) -> str:
    lines = ["index\tname\tabbreviation\tcolor"]
    for value, name, (r, g, b) in classes(names):
        lines.append(f"{value}\t{name}\t{abbreviation(name)}\t#{r:02x}{g:02x}{b:02x}")
    return "\n".join(lines) + "\n"
