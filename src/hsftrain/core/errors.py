"""What the command line shows as one line, and what keeps its traceback.

Every error whose message tells the user what to fix (the file or key, and the fix) is a
:class:`UserError`: ``ConfigError``, ``DataError``, ``SegmentError``, ``ExportError``,
``DownloadError``, ... The CLI logs it as one line and exits with its ``exit_code``. Any
other exception is an internal error (a bug, or the machine running out of memory): the
CLI keeps its traceback and says what to try.

SIGTERM and SIGINT become a request to stop at the next safe point
(:func:`stop_on_signals`), which the stopped command reports as :class:`Interrupted`.

Standard library only: imported by every layer, including the light ``hub`` and
``inference`` packages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)


class UserError(Exception):
    """An error the user can fix; the message names the key or file and the fix.

    Attributes:
        exit_code: the command's exit status (1 unless a subclass says otherwise).
    """

    exit_code: int = 1


class ConfigError(UserError, ValueError):
    """A configuration that cannot be used; the message names the key and the fix."""


class ExportError(UserError, RuntimeError):
    """An exported or quantized model that does not reproduce its source model."""


class NonFiniteError(UserError, RuntimeError):
    """A model, a loss or an output that holds NaN or Inf values."""


class Interrupted(UserError):
    """A run stopped by SIGINT or SIGTERM after saving what it could.

    The exit code follows the shell convention 128 + signal number (130 for SIGINT, 143
    for SIGTERM), so a scheduler sees that the job did not finish.
    """

    def __init__(self, message: str, signum: int = signal.SIGTERM) -> None:
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15, ..."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says that a device or the host ran out of memory (torch, CUDA,
    onnxruntime allocation failures, :class:`MemoryError`)."""
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    text = str(err).lower()
    return any(
        s in text
        for s in ("out of memory", "failed to allocate memory", "cudnn_status_alloc_failed")
    )


#: A second SIGINT this soon after the first is the same Ctrl+C delivered twice (by the
#: terminal to every process, and again by a launcher that forwards it), not a second one.
SAME_SIGNAL_S = 1.0


class StopRequest:
    """The first SIGTERM or SIGINT received while :func:`stop_on_signals` is active: the
    code checks :attr:`signum` at its safe points (between subjects, at batch ends).

    A copy sent to another process (pickled) keeps :attr:`signum`, not the handler.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.at: float = 0.0
        #: Whether a second Ctrl+C asked to stop at once (:class:`KeyboardInterrupt`).
        self.forced = False
        #: The handler :func:`stop_on_signals` installed (to reinstall it, see :meth:`catch`).
        self.handler: Callable[[int, FrameType | None], None] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"signum": self.signum, "at": 0.0, "forced": False, "handler": None}

    def catch(self) -> None:
        """(Re)install this request's handler for SIGTERM and SIGINT, e.g. after a library
        replaced it; a copy in another process gets one that only records the signal (a
        launcher there decides on a second Ctrl+C). Main thread only; elsewhere nothing."""
        if threading.current_thread() is not threading.main_thread():
            return
        if self.handler is None:
            self.handler = _handler(self, "", escalate=False)
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self.handler)

    def raise_if_stopped(self, message: str) -> None:
        """Raise :class:`Interrupted` (``"<SIGNAL>: <message>"``) if a signal came.

        Raises:
            Interrupted: a signal was received.
        """
        if self.signum is not None:
            raise Interrupted(f"{signal_name(self.signum)}: {message}", self.signum)


def _handler(
    request: StopRequest,
    doing: str,
    escalate: bool = True,
    forward: Callable[[int], None] | None = None,
    at_once: str = "",
) -> Callable[[int, FrameType | None], None]:
    owner = os.getpid()

    def handler(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:  # a forked child (data-loading worker): its parent decides
            return
        now = time.monotonic()
        if request.signum is None:
            request.signum, request.at = signum, now
            if doing:
                hint = f" ({at_once})" if at_once and signum == signal.SIGINT else ""
                log.warning("%s received: %s%s", signal_name(signum), doing, hint)
            if forward is not None:
                forward(signum)
        elif escalate and signum == signal.SIGINT and now - request.at > SAME_SIGNAL_S:
            request.forced = True
            raise KeyboardInterrupt

    return handler


@contextlib.contextmanager
def stop_on_signals(
    doing: str,
    request: StopRequest | None = None,
    forward: Callable[[int], None] | None = None,
    at_once: str = "Ctrl+C again to stop at once",
) -> Iterator[StopRequest]:
    """Turn SIGTERM and SIGINT into a :class:`StopRequest` that the code checks at its
    safe points. A Ctrl+C after that (more than :data:`SAME_SIGNAL_S` later) raises
    :class:`KeyboardInterrupt` at once. The previous handlers come back on exit. Outside
    the main thread (where signals cannot be caught) nothing is installed.

    Args:
        doing: what happens now, logged with the first signal ("stopping after ...").
        request: the request to fill (a new one when None).
        forward: called with the first signal (e.g. to pass it on to child processes).
        at_once: the hint logged with a first Ctrl+C.

    Example:
        >>> with stop_on_signals("stopping after the subject in progress") as stop:
        ...     for subject in ["a", "b"]:
        ...         stop.raise_if_stopped("stopped before " + subject)
    """
    request = request if request is not None else StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    request.handler = _handler(request, doing, forward=forward, at_once=at_once)
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    request.catch()
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


class Terminated(KeyboardInterrupt):
    """SIGTERM where no :func:`stop_on_signals` block handles it: the command unwinds as
    on Ctrl+C (``finally`` blocks remove their temporary files) and exits with 143."""


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While active, SIGTERM raises :class:`Terminated` (main thread only; elsewhere
    nothing is installed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
