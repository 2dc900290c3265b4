"""User-facing errors.

Anything raised as a PipelineError is printed by every entry point (`exits_on_error`) as one line (no traceback)
and exits with code 2.
The message must name the file, row or key at fault.
"""

import functools
import sys


class PipelineError(Exception):
    """An error caused by the user's input, reported as one line."""


class ConfigError(PipelineError):
    """A config key is unknown, has the wrong type, or an invalid value."""


class DataError(PipelineError):
    """A manifest, path or label is wrong."""


class ImageReadError(DataError):
    """One image file could not be read; with on_error=skip it is recorded in skipped.csv."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = " ".join(str(reason).split())  # keep it on one line
        super().__init__(f"{self.path}: {self.reason}")


def error_reason(exc: BaseException) -> str:
    """The one-line reason of a failed read: the reader's own ImageReadError reason even where MONAI's Compose
    wrapped it (RuntimeError "applying transform ..." with the original as __cause__), else 'Type: message' of
    the innermost cause."""
    seen = set()
    while exc.__cause__ is not None and id(exc) not in seen and not isinstance(exc, ImageReadError):
        seen.add(id(exc))
        exc = exc.__cause__
    if isinstance(exc, ImageReadError):
        return exc.reason
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def exits_on_error(main=None, *, interrupted: str = "interrupted"):
    """Decorate a `main(argv) -> int` entry point: a PipelineError becomes one line `error: ...` on stderr and
    exit code 2 (no traceback), Ctrl-C prints `interrupted` and gives 130.

    Use bare (`@exits_on_error`) or with the message shown on Ctrl-C (`@exits_on_error(interrupted="...")`).
    """

    def wrap(fn):
        @functools.wraps(fn)
        def entry(*args, **kwargs) -> int:
            try:
                return fn(*args, **kwargs)
            except PipelineError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            except KeyboardInterrupt as exc:  # a message given to the interrupt (the run folder) wins
                print(str(exc) or interrupted, file=sys.stderr)
                return 130

        return entry

    return wrap(main) if main is not None else wrap


class TrainingError(PipelineError):
    """Training cannot go on (a non-finite loss); the message names fold, stage, epoch and step."""
