"""Logging through ``logging`` + rich, and the text log of a run directory."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

#: Name of the text log written into every run directory.
RUN_LOG = "train.log"
#: Fixed-width prefix of file log lines, so that tables logged line by line stay aligned.
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"


class _ConsoleFilter(logging.Filter):
    """Drops records meant for files only (``extra={"file_only": True}``): lines that are
    printed to the terminal in their own layout (the per-epoch table)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


def _one_line_handler(**kwargs: Any) -> logging.Handler:
    """A rich handler that never wraps nor cuts a message (see :func:`setup_logging`)."""
    from rich.logging import RichHandler
    from rich.text import Text

    class OneLineHandler(RichHandler):
        """Prints ``time level message`` as one line of any length; the lines of a
        multi-line message are indented under the first. Rich tracebacks (``--verbose``)
        keep rich's own layout."""

        _last_time = ""

        def emit(self, record: logging.LogRecord) -> None:
            if self.rich_tracebacks and record.exc_info and record.exc_info[0] is not None:
                super().emit(record)
                return
            try:
                stamp = datetime.fromtimestamp(record.created).strftime(
                    str(self._log_render.time_format)
                )
                shown = " " * len(stamp) if stamp == self._last_time else stamp
                self._last_time = stamp
                head = Text.assemble((shown, "log.time"), " ", self.get_level_text(record), " ")
                body = self.render_message(record, self.format(record))
                assert isinstance(body, Text)
                lines = body.split("\n", allow_blank=True)
                line = head + Text("\n" + " " * head.cell_len).join(lines)
                self.console.print(line, soft_wrap=True)
            except Exception:
                self.handleError(record)

    return OneLineHandler(**kwargs)


def setup_logging(verbose: bool = False) -> None:
    """Route ``hsftrain`` logs through a rich handler (INFO, or DEBUG when verbose).

    A message is never wrapped nor cut at the terminal's width (nor at the 80 columns rich
    assumes in a pipe): a long line stays one line, so that a path it names can be copied
    and a log can be searched with ``grep``.
    """
    from rich.logging import RichHandler

    root = logging.getLogger("hsftrain")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        handler = _one_line_handler(show_path=False, rich_tracebacks=verbose, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(_ConsoleFilter())
        root.addHandler(handler)
        root.propagate = False


class RunLogHandler(logging.Handler):
    """Appends records to ``<run_dir>/train.log``; records emitted before the run
    directory exists are kept in memory and written once it does (a run that fails before
    creating its directory leaves nothing behind). Records meant for the terminal only
    (``extra={"console_only": True}``: a shorter form of what the log has in full) are
    left out."""

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__(logging.INFO)
        self.path = Path(run_dir) / RUN_LOG
        self._pending: list[logging.LogRecord] = []
        self._file: logging.FileHandler | None = None
        self.setFormatter(logging.Formatter(FILE_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "console_only", False):
            return
        if self._file is None:
            if not self.path.parent.is_dir():
                self._pending.append(record)
                return
            self._file = logging.FileHandler(self.path, mode="a", encoding="utf-8")
            self._file.setFormatter(self.formatter)
            for waiting in self._pending:
                self._file.emit(waiting)
            self._pending = []
        self._file.emit(record)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._pending = []
        super().close()


@contextlib.contextmanager
def run_log(run_dir: str | Path) -> Iterator[Path]:
    """Append every ``hsftrain`` log record (and Lightning's) at INFO and above to
    ``<run_dir>/train.log`` while the block runs (see :class:`RunLogHandler`).

    Yields:
        the log file's path.
    """
    handler = RunLogHandler(run_dir)
    loggers = [logging.getLogger("hsftrain"), logging.getLogger("lightning.pytorch")]
    root = loggers[0]
    level = root.level
    if level == logging.NOTSET or level > logging.INFO:
        root.setLevel(logging.INFO)
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler.path
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()
        root.setLevel(level)
