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
            except KeyboardInterrupt:
                print(interrupted, file=sys.stderr)
                return 130

        return entry

    return wrap(main) if main is not None else wrap


def read_error_reason(exc: BaseException) -> str:
    """The reader's own words for a failed read: ImageReadError.reason, also where MONAI's Compose wrapped it."""
    for e in (exc, exc.__cause__):
        if isinstance(e, ImageReadError):
            return e.reason
    cause = exc.__cause__ or exc
    return " ".join(f"{type(cause).__name__}: {cause}".split())


class TrainingError(PipelineError):
    """Training cannot go on (a non-finite loss); the message names fold, stage, epoch and step."""
