"""Errors that describe a user's mistake, all subclasses of ``UserError``. The command
line prints them as one line (no traceback) and exits with status 2."""
from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user asked for; the message says what was expected."""


class UnknownModel(UserError, KeyError):
    """A model name that is neither in the zoo nor a checkpoint on disk."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ImageError(UserError, ValueError):
    """An image that cannot be read (missing, corrupt or of an unknown kind)."""


class VocabularyError(UserError, ValueError):
    """A vocabulary the user gave cannot be used; the message says why."""


class WeightsNotFound(UserError, FileNotFoundError):
    """A weight file is missing and cannot be fetched; the message says how to supply it."""


class ConfigError(UserError, ValueError):
    """A training config that does not follow the schema."""


class CheckpointError(UserError, ValueError):
    """A weight file or checkpoint folder that cannot be used; the message names it and says why."""
