"""hsftrain.hub.catalog and `hsftrain hub`: listing models/presets, fetching them ahead."""

from __future__ import annotations

from pathlib import Path

import pytest
import xxhash
from typer.testing import CliRunner

from hsftrain.cli.app import app
from hsftrain.config.compose import ConfigError
from hsftrain.hub import cache_name, catalog, load_registry
from hsftrain.hub import registry as registry_module

PAYLOAD = b"not really an onnx model" * 100
PAYLOAD_HASH = xxhash.xxh3_64_hexdigest(PAYLOAD)


@pytest.fixture
def tiny_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A registry of two file:// models and a presets folder using them."""
    files = tmp_path / "files"
    files.mkdir()
    entries = []
    for name in ("m1", "m2"):
        (files / f"{name}.onnx").write_bytes(PAYLOAD + name.encode())
        digest = xxhash.xxh3_64_hexdigest(PAYLOAD + name.encode())
        entries.append(
            f"{name}:\n  url: {(files / f'{name}.onnx').as_uri()}\n  xxh3_64: '{digest}'\n"
            f"  version: '0.1'\n  kind: onnx\n  description: test {name}\n  source: test\n"
        )
    registry = tmp_path / "models.yaml"
    registry.write_text("".join(entries))
    monkeypatch.setattr(registry_module, "REGISTRY_PATH", registry)
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "both.yaml").write_text("description: two\nmodels:\n  a.onnx: m1\n  b.onnx: m2\n")
    (presets / "local.yaml").write_text("description: local\nmodels:\n  x: {path: /x.onnx}\n")
    monkeypatch.setattr(catalog, "PRESETS_DIR", presets)
    return tmp_path


def test_packaged_presets_and_models_are_listed(tmp_path: Path) -> None:
    names = {p.name: p for p in catalog.presets()}
    assert {"single_fast", "bagging_accurate", "bagging_sq", "demo", "custom"} <= set(names)
    assert names["bagging_accurate"].models == [f"arunet_4.0.0_bag{i}" for i in range(5)]
    listed = catalog.models(cache_dir=tmp_path)
    assert [m.name for m in listed] == list(load_registry())
    # bundled models are always there; published ones only once fetched
    assert all((m.cached is None) != m.name.startswith("hsftrain_") for m in listed)
    entry = load_registry()["arunet_4.0.0_single"]
    (tmp_path / cache_name(entry["url"], entry["xxh3_64"])).write_bytes(b"x")
    cached = {m.name: m.cached for m in catalog.models(cache_dir=tmp_path)}
    assert cached["arunet_4.0.0_single"] is not None and cached["arunet_4.0.0_bag0"] is None
    assert "msd_small.onnx" in catalog.describe_spec(names["demo"].models[0])


def test_fetch_ahead_by_model_and_preset(tiny_hub: Path) -> None:
    cache = tiny_hub / "cache"
    got = catalog.fetch_ahead(["m2", "both"], cache_dir=cache)
    assert [name for name, _ in got] == ["m2", "m1"]  # no repeats, in order
    for name, path in got:
        assert path.parent == cache and path.read_bytes() == PAYLOAD + name.encode()
    assert all(m.cached for m in catalog.models(cache_dir=cache))


def test_fetch_ahead_refuses_unknown_and_local_only(tiny_hub: Path) -> None:
    with pytest.raises(ConfigError, match=r"'nope' is neither .* models: m1, m2; presets: both"):
        catalog.fetch_ahead(["nope"], cache_dir=tiny_hub / "cache")
    with pytest.raises(ConfigError, match="preset 'local' has no hub models"):
        catalog.fetch_ahead(["local"], cache_dir=tiny_hub / "cache")


def test_hub_cli(tiny_hub: Path) -> None:
    runner = CliRunner()
    cache = str(tiny_hub / "cache")
    listed = runner.invoke(app, ["hub", "list", "--cache-dir", cache])
    assert listed.exit_code == 0 and "m1" in listed.output and "both" in listed.output
    fetched = runner.invoke(app, ["hub", "fetch", "both", "--cache-dir", cache])
    assert fetched.exit_code == 0, fetched.output
    assert len(list(Path(cache).glob("*.onnx"))) == 2
    bad = runner.invoke(app, ["hub", "fetch", "nope", "--cache-dir", cache])
    assert bad.exit_code == 1 and "neither a hub model" in " ".join(bad.output.split())
