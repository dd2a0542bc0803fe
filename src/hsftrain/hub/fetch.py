"""Fetch model files by path or URL into a cache, verified by xxh3_64.

A *spec* says where a file comes from:

- a local path (``str`` or ``Path``; ``~`` and relative paths are expanded);
- ``{path: ..., xxh3_64: ...}``: a local path, verified when the hash is given;
- ``{url: ..., xxh3_64: ...}``: an ``http``, ``https`` or ``file`` URL, downloaded once into
  the cache and verified;
- a registry name (see :mod:`hsftrain.hub.registry`), when no such local path exists.

Mappings may be OmegaConf ``DictConfig`` objects.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import xxhash

from hsftrain import __version__
from hsftrain.config.values import plain
from hsftrain.core.atomic import atomic_path
from hsftrain.core.errors import ConfigError, UserError
from hsftrain.hub.registry import HASH_RE, fetch_spec, load_registry

log = logging.getLogger(__name__)

CACHE_ENV = "HSFTRAIN_CACHE"
CHUNK_SIZE = 1 << 20
#: A download temporary untouched for this long is left over from an interrupted run.
STALE_AFTER_S = 600.0
DEFAULT_TIMEOUT = 30.0
URL_SCHEMES = ("http", "https", "file")
SPEC_KEYS = frozenset({"url", "path", "xxh3_64"})
# Descriptive keys a registry entry may carry; fetch() ignores them.
METADATA_KEYS = frozenset({"name", "version", "kind", "description", "source"})
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")

Spec = str | os.PathLike[str] | Mapping[str, Any]


class HashMismatchError(UserError, ValueError):
    """A file's xxh3_64 differs from the one its spec expects."""

    def __init__(self, source: str, expected: str, actual: str) -> None:
        self.source = source
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"xxh3_64 mismatch for {source}: expected {expected}, got {actual}. "
            "The file was not kept. Check the xxh3_64 in the config (or registry) and the "
            "URL or path: the file may have changed upstream, or the hash may be a typo."
        )


class DownloadError(UserError, OSError):
    """A download failed (connection error, HTTP error, or truncated transfer)."""


#: Where models are cached, in the words every help text and page uses.
CACHE_LOCATION = (
    "$HSFTRAIN_CACHE if set, else $XDG_CACHE_HOME/hsftrain/models (~/.cache/hsftrain/models)"
)


def default_cache_dir() -> Path:
    """The model cache: :data:`CACHE_LOCATION`."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "hsftrain" / "models"


def file_hash(path: str | os.PathLike[str]) -> str:
    """xxh3_64 hex digest of a file, read in 1 MiB chunks.

    Raises:
        FileNotFoundError: no file at ``path``.
    """
    digest = xxhash.xxh3_64()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_spec(path: str | os.PathLike[str], url: str | None = None) -> dict[str, str]:
    """A spec for ``path``: ``{url, xxh3_64}`` when ``url`` is given, else ``{path, xxh3_64}``.

    Used to write model presets after uploading a file to ``url``.

    Raises:
        FileNotFoundError: no file at ``path``.
    """
    digest = file_hash(Path(path).expanduser())
    if url is not None:
        return {"url": url, "xxh3_64": digest}
    return {"path": str(path), "xxh3_64": digest}


def cache_name(url: str, xxh3_64: str) -> str:
    """Cache file name for ``url``: its basename with the hash before the suffix.

    ``https://host/a/model.onnx?download=1`` with hash ``h`` -> ``model-h.onnx``, so that
    two files with the same basename (different hashes) do not collide.
    """
    basename = urllib.parse.unquote(Path(urllib.parse.urlparse(url).path).name)
    basename = _UNSAFE_CHARS.sub("_", basename).strip("._") or "download"
    stem, suffix = os.path.splitext(basename)
    return f"{stem}-{xxh3_64}{suffix}"


def cache_path(url: str, xxh3_64: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where :func:`fetch` keeps the download of ``url`` (default cache: :func:`default_cache_dir`)."""
    root = Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser()
    return root / cache_name(url, xxh3_64)


def fetch(
    spec: Spec,
    cache_dir: str | os.PathLike[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool | None = None,
) -> Path:
    """Local path of the file that ``spec`` describes, downloading it if needed.

    A URL is downloaded once into ``cache_dir`` (default :func:`default_cache_dir`); when
    the cache already holds a file with the expected hash, no network access happens. A
    cached file whose hash is stale is fetched again. Downloads go to a temporary file in
    the cache, are verified, then renamed into place, so an interrupted or refused
    download never leaves a partial file behind.

    Args:
        spec: path, registry name, ``{path, xxh3_64}`` or ``{url, xxh3_64}`` mapping.
        cache_dir: where downloads are kept.
        timeout: seconds allowed to connect and between two reads.
        progress: show a progress bar; ``None``: only when stderr is a terminal.

    Raises:
        FileNotFoundError: a local path (or ``file://`` URL) that does not exist.
        ConfigError: a malformed spec (unknown key, missing or malformed hash, bad URL).
        HashMismatchError: the file's xxh3_64 differs from the spec's.
        DownloadError: the download failed or was truncated.
    """
    spec = _as_spec(spec)
    if "path" in spec:
        path = Path(spec["path"]).expanduser().resolve()
        if not path.is_file():
            what = "a directory, not a file" if path.is_dir() else "not found"
            raise FileNotFoundError(f"model file {path} is {what} (from {spec['path']!r})")
        expected = spec.get("xxh3_64")
        if expected is not None:
            actual = file_hash(path)
            if actual != expected:
                raise HashMismatchError(str(path), expected, actual)
        return path

    url, expected = spec["url"], spec["xxh3_64"]
    target = cache_path(url, expected, cache_dir)
    remove_stale_downloads(target.parent)
    if target.is_file():
        actual = file_hash(target)
        if actual == expected:
            log.debug("Using cached %s", target)
            return target
        log.warning(
            "Cached %s has xxh3_64 %s, expected %s: fetching it again from %s",
            target,
            actual,
            expected,
            url,
        )
        target.unlink()
    _download(url, expected, target, timeout=timeout, progress=progress)
    return target


def _as_spec(spec: Any) -> dict[str, Any]:
    """Normalise ``spec`` to a dict with either ``path`` or ``url`` (+ ``xxh3_64``)."""
    if isinstance(spec, os.PathLike):
        return {"path": os.fspath(spec)}
    if isinstance(spec, str):
        if Path(spec).expanduser().exists():
            return {"path": spec}
        registry = load_registry()
        if spec in registry:
            return _as_spec(fetch_spec(registry[spec]))
        raise FileNotFoundError(
            f"model file not found: {Path(spec).expanduser().resolve()} ({spec!r} is neither "
            f"an existing path nor a registry name; registry names: {', '.join(registry)})"
        )
    spec = plain(spec)
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"a model spec must be a path, a registry name or a mapping with `url` or "
            f"`path` and `xxh3_64`, not {type(spec).__name__}: {spec!r}"
        )
    unknown = set(spec) - SPEC_KEYS - METADATA_KEYS
    if unknown:
        raise ConfigError(
            f"unknown key(s) {sorted(unknown)} in model spec {dict(spec)!r}: "
            "expected `url` or `path`, and `xxh3_64`"
        )
    if ("url" in spec) == ("path" in spec):
        raise ConfigError(f"model spec {dict(spec)!r} needs exactly one of `url` or `path`")
    out: dict[str, Any] = {}
    digest = spec.get("xxh3_64")
    if digest is not None:
        digest = str(digest).strip().lower()
        if not HASH_RE.match(digest):
            raise ConfigError(
                f"`xxh3_64` must be 16 hex characters, got {spec.get('xxh3_64')!r} "
                f"in model spec {dict(spec)!r}"
            )
        out["xxh3_64"] = digest
    if "path" in spec:
        out["path"] = os.fspath(spec["path"])
        return out
    url = str(spec["url"])
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme not in URL_SCHEMES:
        raise ConfigError(
            f"`url` must use one of {', '.join(URL_SCHEMES)}, got {url!r} "
            "(for a local file, use `path` instead)"
        )
    if digest is None:
        raise ConfigError(
            f"`xxh3_64` is required with `url` ({url}): download the file once and compute "
            "it with hsftrain.hub.file_hash (or hash_spec)"
        )
    out["url"] = url
    return out


def remove_stale_downloads(folder: Path, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Delete the temporary files of interrupted downloads (``.<name>.*.hsftrain-tmp*``)
    in a cache ``folder`` that nothing has written to for ``older_than_s`` seconds (a
    download in progress in another process keeps its file fresh). Returns them."""
    import time

    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for tmp in folder.glob(".*.hsftrain-tmp*"):
        try:
            if tmp.is_file() and now - tmp.stat().st_mtime > older_than_s:
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # removed meanwhile, or not ours to remove
            continue
    if removed:
        log.info(
            "removed %d temporary file(s) of interrupted downloads from %s", len(removed), folder
        )
    return removed


def _download(url: str, expected: str, target: Path, timeout: float, progress: bool | None) -> None:
    """Stream ``url`` into a temp file next to ``target``, verify, then rename it.

    Raises:
        HashMismatchError: the downloaded file's hash is not ``expected``.
        DownloadError: connection error, HTTP error, or fewer bytes than announced.
        FileNotFoundError: a ``file://`` URL naming a missing file.
    """
    with atomic_path(target) as tmp:
        digest = xxhash.xxh3_64()
        with open(tmp, "wb") as out, _open_url(url, timeout, target) as (stream, total):
            log.info("Downloading %s -> %s", url, target)
            received = 0
            with _progress_bar(target.name, total, progress) as advance:
                while chunk := _read(stream, url):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    advance(len(chunk))
            if total is not None and received != total:
                raise DownloadError(
                    f"download of {url} was cut short: got {received} of {total} bytes; "
                    "try again (check the network connection)"
                )
        actual = digest.hexdigest()
        if actual != expected:
            raise HashMismatchError(url, expected, actual)


#: What works without the network, named when a download cannot start.
OFFLINE_ALTERNATIVE = (
    "the models bundled with hsftrain need no download: segmentation=msd (hsftrain_msd_1.2) "
    "for segment, finetuning.pretrained=hsftrain_msd_1.2_ckpt for finetune"
)


def _way_out(url: str, target: Path | None) -> str:
    """Where to put the file by hand, and what works offline."""
    if target is None:
        return f"give a local `path` spec instead; {OFFLINE_ALTERNATIVE}"
    return (
        f"download {url} yourself and save it as {target.name} in the model cache "
        f"{target.parent} ({CACHE_ENV} sets another folder), or give its local `path`; "
        f"{OFFLINE_ALTERNATIVE}"
    )


@contextmanager
def _open_url(
    url: str, timeout: float, target: Path | None = None
) -> Iterator[tuple[BinaryIO, int | None]]:
    """Yield ``(stream, size or None)`` for an http(s) or file URL (downloaded into the
    cache file ``target``, which an error names).

    Raises:
        DownloadError: the server could not be reached or answered an error.
        FileNotFoundError: a ``file://`` URL naming a missing file.
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme.lower() == "file":
        path = Path(urllib.request.url2pathname(parsed.path))
        if not path.is_file():
            raise FileNotFoundError(f"no model file at {path} (from {url})")
        with open(path, "rb") as fh:
            yield fh, path.stat().st_size
        return

    request = urllib.request.Request(url, headers={"User-Agent": f"hsftrain/{__version__}"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        raise DownloadError(
            f"cannot download {url}: HTTP {err.code} {err.reason}; {_way_out(url, target)}"
        ) from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(
            f"cannot download {url}: {reason} (offline?); {_way_out(url, target)}"
        ) from err
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        yield response, total


def _read(stream: BinaryIO, url: str) -> bytes:
    """Next chunk of ``stream`` (``b""`` at the end).

    Raises:
        DownloadError: the connection dropped or timed out.
    """
    import http.client

    try:
        return stream.read(CHUNK_SIZE)
    except (OSError, http.client.HTTPException) as err:
        raise DownloadError(f"download of {url} failed: {err!r}; try again") from err


@contextmanager
def _progress_bar(name: str, total: int | None, enabled: bool | None) -> Iterator[Any]:
    """Yield ``advance(n_bytes)``; a transient rich bar when enabled (default: stderr is a TTY)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(name, total=total)
        yield lambda n: bar.advance(task, n)
