"""User-facing errors.

Anything raised as a PipelineError is printed by the CLI as one line (no traceback) and exits with code 2.
The message must name the file, row or key at fault.
"""


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


class TrainingError(PipelineError):
    """Training cannot go on (a non-finite loss); the message names fold, stage, epoch and step."""
