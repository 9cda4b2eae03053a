"""Exceptions that the command line turns into one-line messages and exit codes."""

from __future__ import annotations


class BhsearchError(Exception):
    """Base class for every error bhsearch reports to a user without a traceback."""

    exit_code = 1
    #: True when a native thread was left running (a Ray connect that never answered): the command line
    #: then ends the process at once after the message, as interpreter shutdown could abort inside it.
    exit_at_once = False


class UsageError(BhsearchError, ValueError):
    """The user asked for something invalid: bad option, unknown name, malformed file (exit 2)."""

    exit_code = 2


class DataError(UsageError):
    """A dataset or annotation file is missing, corrupt or inconsistent (exit 2)."""


class InfeasibleError(UsageError):
    """Constraints admit no candidate (exit 2)."""


class TrainingError(BhsearchError):
    """A training run could not go on (NaN/inf loss, diverged); the run is recorded (exit 1)."""
