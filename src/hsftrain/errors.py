"""What the command line shows as one line, and what keeps its traceback.

Every error whose message tells the user what to fix (the file or key, and the fix) is a
:class:`UserError`: ``ConfigError``, ``DataError``, ``SegmentError``, ``ExportError``,
``DownloadError``, ... The CLI logs it as one line and exits with its ``exit_code``. Any
other exception is an internal error (a bug, or the machine running out of memory): the
CLI keeps its traceback and says what to try.

Standard library only: imported by every layer, including the light ``hub`` and
``inference`` packages.
"""

from __future__ import annotations

import signal


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
