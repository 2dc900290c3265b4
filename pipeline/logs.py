"""The project's console logger: one place that names it and sets it up for every entry point."""

from __future__ import annotations

import logging
import sys
import warnings

LOGGER = "graystem"
log = logging.getLogger(LOGGER)


def setup_logging(quiet: bool = False, is_main: bool = True) -> None:
    """Console lines go to stdout as plain messages; quiet runs and non-zero torchrun ranks show warnings only.
    Called by every entry point, so a test's captured stdout receives the lines."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(LOGGER)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if quiet or not is_main else logging.INFO)
    logger.propagate = False
    # pydicom warns about every malformed element of every file it opens; the readers report what stops a
    # file as one line naming it, and an archive would otherwise print thousands of lines (and an error would
    # no longer be one line)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
