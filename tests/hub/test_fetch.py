"""hsftrain.hub: fetch by path / URL / registry name, xxh3_64 checks, cache behaviour.

Every download comes from a ThreadingHTTPServer on 127.0.0.1 started per test.
"""

from __future__ import annotations

import functools
import http.server
import importlib
import logging
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import xxhash
from omegaconf import OmegaConf

from hsftrain.config.compose import ConfigError
from hsftrain.hub import (
    REGISTRY_PATH,
    DownloadError,
    HashMismatchError,
    cache_name,
    default_cache_dir,
    fetch,
    file_hash,
    hash_spec,
    load_registry,
    resolve,
)
from hsftrain.hub import registry as registry_module
from hsftrain.hub.registry import ASSETS_DIR

# `hsftrain.hub.fetch` is the function; the module is reached through importlib.
fetch_module = importlib.import_module("hsftrain.hub.fetch")

PAYLOAD = bytes(range(256)) * 40  # 10 KiB
PAYLOAD_HASH = xxhash.xxh3_64_hexdigest(PAYLOAD)
OTHER = b"another model with the same basename" * 10
OTHER_HASH = xxhash.xxh3_64_hexdigest(OTHER)
WRONG_HASH = "0123456789abcdef"


@dataclass
class Server:
    """Files under ``root`` served at ``base``; ``requests`` records every GET path."""

    root: Path
    base: str = ""
    requests: list[str] = field(default_factory=list)
    truncate: set[str] = field(default_factory=set)  # announce full length, send half, hang up
    stall: set[str] = field(default_factory=set)  # send headers, then nothing for a while

    def add(self, name: str, data: bytes) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return self.url(name)

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"


class _Handler(http.server.SimpleHTTPRequestHandler):
    state: Server

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        path = urllib.parse.urlparse(self.path).path.lstrip("/")
        self.state.requests.append(path)
        if path in self.state.truncate or path in self.state.stall:
            data = (self.state.root / path).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if path in self.state.stall:
                self.wfile.flush()
                time.sleep(1.0)
                return
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the client hanging up mid-response is what some tests do on purpose


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    state = Server(root=tmp_path / "srv")
    state.root.mkdir()
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = _QuietServer(("127.0.0.1", 0), functools.partial(handler, directory=str(state.root)))
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=2)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a test forgets to pass, nothing is written under $HOME."""
    monkeypatch.setenv("HSFTRAIN_CACHE", str(tmp_path / "default-cache"))


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def all_files(directory: Path) -> list[str]:
    """Every file under ``directory``, hidden ones included (empty if it does not exist)."""
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.rglob("*") if p.is_file())


# --- hashing helpers -------------------------------------------------------------------


def test_file_hash_streams_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch_module, "CHUNK_SIZE", 7)
    path = tmp_path / "model.onnx"
    path.write_bytes(PAYLOAD)
    assert file_hash(path) == PAYLOAD_HASH
    assert re.fullmatch(r"[0-9a-f]{16}", PAYLOAD_HASH)


def test_hash_spec(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(PAYLOAD)
    assert hash_spec(path, url="https://example.org/model.onnx") == {
        "url": "https://example.org/model.onnx",
        "xxh3_64": PAYLOAD_HASH,
    }
    assert hash_spec(path) == {"path": str(path), "xxh3_64": PAYLOAD_HASH}


def test_cache_name_keeps_basename_and_hash() -> None:
    url = "https://zenodo.org/record/1/files/arunet_3.0.0_single.onnx?download=1"
    assert cache_name(url, PAYLOAD_HASH) == f"arunet_3.0.0_single-{PAYLOAD_HASH}.onnx"
    assert cache_name("https://example.org/", PAYLOAD_HASH) == f"download-{PAYLOAD_HASH}"


# --- downloads -------------------------------------------------------------------------


def test_good_hash_downloads_once(server: Server, cache: Path) -> None:
    url = server.add("models/model.onnx", PAYLOAD)
    spec = {"url": url, "xxh3_64": PAYLOAD_HASH}

    first = fetch(spec, cache_dir=cache)
    second = fetch(spec, cache_dir=cache)

    assert first == second == cache / f"model-{PAYLOAD_HASH}.onnx"
    assert first.read_bytes() == PAYLOAD
    assert server.requests == ["models/model.onnx"]
    assert all_files(cache) == [first.name]


def test_cached_file_needs_no_network(cache: Path) -> None:
    url = "http://127.0.0.1:9/unreachable/model.onnx"  # discard port: nothing listens
    cache.mkdir()
    (cache / cache_name(url, PAYLOAD_HASH)).write_bytes(PAYLOAD)
    assert fetch({"url": url, "xxh3_64": PAYLOAD_HASH}, cache_dir=cache).read_bytes() == PAYLOAD


def test_wrong_hash_is_refused_and_nothing_is_kept(server: Server, cache: Path) -> None:
    url = server.add("model.onnx", PAYLOAD)
    with pytest.raises(HashMismatchError) as info:
        fetch({"url": url, "xxh3_64": WRONG_HASH}, cache_dir=cache)
    message = str(info.value)
    assert url in message and WRONG_HASH in message and PAYLOAD_HASH in message
    assert "check the xxh3_64" in message.lower()
    assert isinstance(info.value, ValueError)
    assert (info.value.expected, info.value.actual) == (WRONG_HASH, PAYLOAD_HASH)
    assert all_files(cache) == []


def test_stale_cache_is_fetched_again(
    server: Server, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = {"url": server.add("model.onnx", PAYLOAD), "xxh3_64": PAYLOAD_HASH}
    path = fetch(spec, cache_dir=cache)
    path.write_bytes(b"corrupted")

    with caplog.at_level(logging.WARNING, logger="hsftrain.hub"):
        again = fetch(spec, cache_dir=cache)

    assert again == path and again.read_bytes() == PAYLOAD
    assert len(server.requests) == 2
    assert any("fetching it again" in r.getMessage() for r in caplog.records)
    assert all_files(cache) == [path.name]


def test_interrupted_download_leaves_no_partial_file(server: Server, cache: Path) -> None:
    url = server.add("model.onnx", PAYLOAD)
    server.truncate.add("model.onnx")
    with pytest.raises(DownloadError) as info:
        fetch({"url": url, "xxh3_64": PAYLOAD_HASH}, cache_dir=cache)
    assert url in str(info.value)
    assert all_files(cache) == []


def test_keyboard_interrupt_mid_stream_leaves_no_partial_file(
    server: Server, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = server.add("model.onnx", PAYLOAD)
    monkeypatch.setattr(fetch_module, "CHUNK_SIZE", 1024)
    read = fetch_module._read
    calls = []

    def interrupted(stream, url):  # noqa: ANN001, ANN202
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return read(stream, url)

    monkeypatch.setattr(fetch_module, "_read", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch({"url": url, "xxh3_64": PAYLOAD_HASH}, cache_dir=cache)
    assert all_files(cache) == []


def test_stalled_server_times_out(server: Server, cache: Path) -> None:
    url = server.add("model.onnx", PAYLOAD)
    server.stall.add("model.onnx")
    start = time.monotonic()
    with pytest.raises(DownloadError):
        fetch({"url": url, "xxh3_64": PAYLOAD_HASH}, cache_dir=cache, timeout=0.2)
    assert time.monotonic() - start < 0.9
    assert all_files(cache) == []


def test_http_error_is_a_download_error(server: Server, cache: Path) -> None:
    with pytest.raises(DownloadError, match="404"):
        fetch({"url": server.url("missing.onnx"), "xxh3_64": PAYLOAD_HASH}, cache_dir=cache)
    assert all_files(cache) == []


def test_same_basename_different_files_do_not_collide(server: Server, cache: Path) -> None:
    a = fetch({"url": server.add("a/model.onnx", PAYLOAD), "xxh3_64": PAYLOAD_HASH}, cache)
    b = fetch({"url": server.add("b/model.onnx", OTHER), "xxh3_64": OTHER_HASH}, cache)
    assert a != b
    assert (a.read_bytes(), b.read_bytes()) == (PAYLOAD, OTHER)


def test_progress_bar_does_not_change_the_result(server: Server, cache: Path) -> None:
    url = server.add("model.onnx", PAYLOAD)
    path = fetch({"url": url, "xxh3_64": PAYLOAD_HASH}, cache_dir=cache, progress=True)
    assert path.read_bytes() == PAYLOAD


def test_dictconfig_spec(server: Server, cache: Path) -> None:
    cfg = OmegaConf.create({"pretrained": {"url": server.add("m.ckpt", PAYLOAD)}})
    cfg.pretrained.xxh3_64 = PAYLOAD_HASH.upper()  # case does not matter
    assert fetch(cfg.pretrained, cache_dir=cache).read_bytes() == PAYLOAD


# --- file:// URLs and local paths -------------------------------------------------------


def test_file_url_is_copied_into_the_cache(tmp_path: Path, cache: Path) -> None:
    source = tmp_path / "exports" / "model.onnx"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    path = fetch({"url": source.as_uri(), "xxh3_64": PAYLOAD_HASH}, cache_dir=cache)
    assert path.parent == cache and path.read_bytes() == PAYLOAD

    with pytest.raises(HashMismatchError):
        fetch({"url": source.as_uri(), "xxh3_64": WRONG_HASH}, cache_dir=cache)
    missing = (tmp_path / "nope.onnx").as_uri()
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        fetch({"url": missing, "xxh3_64": PAYLOAD_HASH}, cache_dir=cache)
    assert all_files(cache) == [path.name]


def test_missing_local_path_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_model.onnx"
    with pytest.raises(FileNotFoundError, match="no_such_model.onnx"):
        fetch(missing)
    with pytest.raises(FileNotFoundError, match="no_such_model.onnx"):
        fetch(str(missing))
    with pytest.raises(FileNotFoundError, match="no_such_model.onnx"):
        fetch({"path": str(missing)})


def test_local_paths_expand_home_and_relative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "model.onnx").write_bytes(PAYLOAD)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)

    expected = (home / "models" / "model.onnx").resolve()
    assert fetch("~/models/model.onnx") == expected
    assert fetch("models/model.onnx") == expected
    assert fetch(Path("models/model.onnx")) == expected


def test_local_path_with_hash_is_verified(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(PAYLOAD)
    assert fetch({"path": str(path), "xxh3_64": PAYLOAD_HASH}) == path.resolve()
    with pytest.raises(HashMismatchError, match=WRONG_HASH):
        fetch({"path": str(path), "xxh3_64": WRONG_HASH})


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ({"url": "https://example.org/m.onnx"}, "xxh3_64"),
        ({"url": "https://example.org/m.onnx", "xxh3_64": "abc"}, "xxh3_64"),
        ({"url": "https://example.org/m.onnx", "xxh3": PAYLOAD_HASH}, "xxh3"),
        ({"url": "ftp://example.org/m.onnx", "xxh3_64": PAYLOAD_HASH}, "url"),
        ({"url": "https://example.org/m.onnx", "path": "m.onnx"}, "url"),
        ({"xxh3_64": PAYLOAD_HASH}, "url"),
        (42, "path"),
    ],
)
def test_malformed_specs_name_the_key(spec: object, key: str, cache: Path) -> None:
    with pytest.raises(ConfigError, match=key):
        fetch(spec, cache_dir=cache)  # type: ignore[arg-type]
    assert all_files(cache) == []


def test_default_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HSFTRAIN_CACHE", str(tmp_path / "explicit"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("HSFTRAIN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "hsftrain" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "hsftrain" / "models"


def test_fetch_uses_default_cache_dir(server: Server, tmp_path: Path) -> None:
    path = fetch({"url": server.add("model.onnx", PAYLOAD), "xxh3_64": PAYLOAD_HASH})
    assert path.parent == tmp_path / "default-cache"


# --- registry --------------------------------------------------------------------------


def test_registry_entries_are_well_formed() -> None:
    assert REGISTRY_PATH.name == "models.yaml" and REGISTRY_PATH.parent.name == "presets"
    registry = load_registry()
    assert registry
    for name, entry in registry.items():
        assert re.fullmatch(r"[A-Za-z0-9._-]+", name), name
        assert re.fullmatch(r"[0-9a-f]{16}", entry["xxh3_64"]), name
        if "asset" in entry:  # bundled with hsftrain: the file is there, with that hash
            assert "url" not in entry, name
            assert file_hash(ASSETS_DIR / entry["asset"]) == entry["xxh3_64"], name
        else:
            assert urllib.parse.urlparse(entry["url"]).scheme == "https", name
        assert entry["kind"] in {"onnx", "checkpoint"}, name
        assert entry["version"] and entry["source"], name
    urls = [e.get("url") or e["asset"] for e in registry.values()]
    hashes = [e["xxh3_64"] for e in registry.values()]
    assert len(set(urls)) == len(urls) and len(set(hashes)) == len(hashes)


def test_bundled_registry_entries_resolve_to_verified_paths() -> None:
    spec = resolve("hsftrain_msd_1.2_ckpt")
    assert spec == {
        "path": str(ASSETS_DIR / "models/msd_hippocampus.ckpt"),
        "xxh3_64": "c21a293deaf0d755",
    }
    assert fetch("hsftrain_msd_1.2") == ASSETS_DIR / "models/msd_hippocampus.onnx"


def test_load_registry_returns_a_copy() -> None:
    registry = load_registry()
    name = next(iter(registry))
    registry[name]["url"] = "changed"
    assert load_registry()[name]["url"] != "changed"


def test_registry_rejects_malformed_entries(tmp_path: Path) -> None:
    bad = tmp_path / "models.yaml"
    bad.write_text("broken:\n  url: https://example.org/m.onnx\n  xxh3_64: xyz\n")
    with pytest.raises(ConfigError, match="broken.xxh3_64"):
        load_registry(bad)


def test_resolve() -> None:
    name, entry = next(iter(load_registry().items()))
    assert resolve(name) == entry
    spec = {"url": "https://example.org/m.onnx", "xxh3_64": PAYLOAD_HASH}
    assert resolve(OmegaConf.create(spec)) == spec
    assert resolve("some/local/model.onnx") == "some/local/model.onnx"
    assert resolve(Path("m.onnx")) == Path("m.onnx")


def test_fetch_by_registry_name(
    server: Server, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = server.add("model.onnx", PAYLOAD)
    registry = tmp_path / "models.yaml"
    registry.write_text(
        f"tiny_model:\n  url: {url}\n  xxh3_64: '{PAYLOAD_HASH}'\n  version: '0.0.1'\n"
        "  kind: onnx\n  description: test\n  source: test\n"
    )
    monkeypatch.setattr(registry_module, "REGISTRY_PATH", registry)
    assert resolve("tiny_model")["url"] == url
    assert fetch("tiny_model", cache_dir=cache).read_bytes() == PAYLOAD
    with pytest.raises(FileNotFoundError, match="tiny_model"):
        fetch("tiny_modle", cache_dir=cache)


def test_hub_imports_stay_light() -> None:
    code = (
        "import sys, hsftrain.hub; "
        "heavy = {'torch', 'lightning', 'torchio', 'onnxruntime', 'hydra', 'nibabel'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
