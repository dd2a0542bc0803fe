import numpy as np

from hsftrain.data.labels import SUBFIELDS
from hsftrain.data.nifti import load_volume
from hsftrain.data.synth import make_phantom, write_phantoms


def test_phantom_has_every_subfield_and_distinct_intensities():
    image, label = make_phantom((32, 40, 32), np.random.default_rng(0))
    assert image.shape == label.shape == (32, 40, 32)
    assert set(np.unique(label)) == set(range(len(SUBFIELDS)))
    means = [image[label == v].mean() for v in range(len(SUBFIELDS))]
    assert len({round(m, -1) for m in means}) >= 5


def test_write_phantoms_layout(tmp_path):
    paths = write_phantoms(tmp_path, n=2, shape=(16, 20, 16), seed=1)
    assert [p.name for p, _ in paths] == ["sub-000_img.nii.gz", "sub-001_img.nii.gz"]
    data, affine = load_volume(paths[0][1])
    assert data.shape == (16, 20, 16) and np.allclose(affine, np.eye(4))


def test_synth_cli(tmp_path):
    from typer.testing import CliRunner

    from hsftrain.cli.app import app

    result = CliRunner().invoke(
        app, ["data", "synth", "--out", str(tmp_path), "--n", "2", "--shape", "16x16x16"]
    )
    assert result.exit_code == 0, result.output
    assert len(list(tmp_path.glob("*_lbl.nii.gz"))) == 2
