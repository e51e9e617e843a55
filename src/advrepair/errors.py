"""Exceptions with messages that name the problem and how to fix it."""


class AdvRepairError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(AdvRepairError, ValueError):
    """Images, labels or arguments that break the contract (range, shape, dtype, NaN)."""


class DatasetError(AdvRepairError, FileNotFoundError):
    """A dataset that is missing, malformed or unknown."""


class CheckpointError(AdvRepairError, ValueError):
    """A checkpoint that is missing, unreadable, not safetensors, or does not match its card."""


class StorageError(AdvRepairError, OSError):
    """A result or state file that cannot be written (full disk, unwritable folder) or a
    results folder whose lock cannot be had; what was there before is left intact."""
