"""Exceptions a user can cause.

Every error that bad input can trigger (a malformed ratings file, an unknown id, a
corrupted bundle, ...) is a :class:`RecsysExportError`. The CLI prints its message as
one line on stderr and exits with status 2; library users can catch the base class.
This module imports nothing heavy so that the torch-free runtime can use it.
"""

from __future__ import annotations


class RecsysExportError(Exception):
    """Base class of every error caused by user input; the message says how to fix it."""


class DataError(RecsysExportError, ValueError):
    """A ratings file or in-memory rating data is unusable (missing column, NaN, ...)."""


class UnknownIdError(RecsysExportError, KeyError):
    """A raw user/item id is not in the id map, or an index is out of range."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class ConfigError(RecsysExportError, ValueError):
    """Invalid hyperparameters or options (k < 1, negative factors, ...)."""


class CheckpointError(RecsysExportError):
    """A checkpoint file is missing, not ours, corrupted or holds non-finite weights."""


class BundleError(RecsysExportError):
    """A bundle is missing, corrupted, from a newer format version, or unsafe to load."""


class TrainingDiverged(RecsysExportError):
    """The training loss became NaN or infinite."""


class ExportError(RecsysExportError):
    """A model cannot be exported to a format (data-dependent control flow, an operator
    the exporter does not support, ...): the message names the format and the reason."""


class ParityError(RecsysExportError):
    """An export does not reproduce the eager model within tolerance."""


class WorkerError(RecsysExportError):
    """A Ray worker failed a block for good (died more than ``max_retries`` times, or
    raised): the message names the block and the cause."""
