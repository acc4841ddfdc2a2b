"""Errors that describe a user's mistake. The command line prints them as one
line (no traceback) and exits with status 2."""
from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user asked for; the message says what was expected."""


class UnknownModel(UserError, KeyError):
    """A model name that is neither in the zoo nor a checkpoint on disk."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ImageError(UserError, ValueError):
    """An image that cannot be read (missing, corrupt or of an unknown kind)."""
