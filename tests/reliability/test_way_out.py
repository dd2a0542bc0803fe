"""Errors about a missing file or download name the folder searched, the file expected
and the alternative (bundled model, environment variable, key)."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hsftrain.hub.fetch import cache_path
from hsftrain.hub.registry import fetch_spec, load_registry

from .conftest import assert_user_error, cli


def test_an_offline_download_names_the_cache_file_and_the_bundled_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    cache = tmp_path / "cache"
    out = cli("hub", "fetch", "arunet_4.0.0_single", "--cache-dir", cache)
    spec = fetch_spec(load_registry()["arunet_4.0.0_single"])
    expected = cache_path(spec["url"], spec["xxh3_64"], cache)
    message = assert_user_error(
        out, "offline", expected.name, str(cache), "HSFTRAIN_CACHE", "segmentation=msd"
    )
    assert "hsftrain_msd_1.2_ckpt" in message
    assert not list(cache.glob("*"))  # nothing half-written
