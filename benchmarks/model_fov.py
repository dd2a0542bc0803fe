"""The size of a model's training crops (ONNX metadata ``field_of_view_mm``), measured.

Models exported by hsftrain carry it (:mod:`hsftrain.export.field_of_view`); the bundled
models predate the key, so their presets give it (``segmentation.model_metadata`` of
``conf/segmentation/msd.yaml`` and ``demo.yaml``; a key in the file wins). This script
measures it on a model's training images exactly as an export does (per-axis median of
shape x voxel size, canonical RAS axes):

    python benchmarks/model_fov.py            # the two bundled models' values, for their presets
    python benchmarks/model_fov.py MODEL.onnx 'IMAGES_GLOB' --out COPY.onnx

The second form writes a copy of ``MODEL.onnx`` with the key added, every other metadata
key and the graph kept (rerunning it is harmless). The bundled models were trained on the
208 MSD Task04 crops (``msd_hippocampus.onnx``, ``../shared/data/msd_hippocampus/imagesTr``)
and on the 48 crops of ``datasets=sample`` (``msd_small.onnx``,
``assets/sample/msd_hippocampus``).
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import onnx

from hsftrain.core.atomic import atomic_path
from hsftrain.core.onnx_metadata import FIELD_OF_VIEW_KEY as KEY
from hsftrain.core.onnx_metadata import decode_metadata, write_metadata
from hsftrain.export.field_of_view import median_field_of_view
from hsftrain.hub.fetch import file_hash

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "src" / "hsftrain" / "assets"
BUNDLED = {
    ASSETS / "models" / "msd_hippocampus.onnx": str(
        ROOT.parent / "shared" / "data" / "msd_hippocampus" / "imagesTr" / "*.nii.gz"
    ),
    ASSETS / "models" / "msd_small.onnx": str(
        ASSETS / "sample" / "msd_hippocampus" / "*_img.nii.gz"
    ),
}


def set_field_of_view(model: Path, images: str, out: Path | None = None) -> list[float]:
    """Write ``model`` (or its copy ``out``) with ``field_of_view_mm`` measured on the
    images of the glob ``images``, atomically; every other metadata key kept. Returns the
    value.

    Raises:
        SystemExit: no image matches ``images``.
    """
    paths = sorted(glob.glob(images))
    fov = median_field_of_view(paths)
    if fov is None:
        raise SystemExit(f"{images}: no training image matches")
    proto = onnx.load(str(model))
    metadata = decode_metadata({p.key: p.value for p in proto.metadata_props})
    metadata[KEY] = list(fov)
    write_metadata(proto, metadata)
    with atomic_path(out or model) as tmp:
        onnx.save(proto, str(tmp))
    print(f"{(out or model).name}: {KEY} {list(fov)} from {len(paths)} images")
    return list(fov)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, nargs="?", help="default: the bundled models")
    parser.add_argument("images", nargs="?", help="glob of the model's training images")
    parser.add_argument("--out", type=Path, help="the copy to write (default: print only)")
    args = parser.parse_args()
    if args.model is None:
        for model, images in BUNDLED.items():
            paths = sorted(glob.glob(images))
            fov = median_field_of_view(paths)
            print(f"{model.name}: {KEY}: {list(fov) if fov else None}  ({len(paths)} images)")
        return
    if not args.images:
        parser.error("give the glob of the model's training images")
    if args.out is None:
        print(f"{args.model.name}: {KEY}: {median_field_of_view(sorted(glob.glob(args.images)))}")
        return
    set_field_of_view(args.model, args.images, args.out)
    print(f"  xxh3_64 {file_hash(args.out)}")


if __name__ == "__main__":
    main()
