"""Exception classes raised by FedMRG for user-facing problems (bad input, bad configuration)."""

from __future__ import annotations


class FedMRGError(Exception):
    """Base class: a problem the user can fix, with a message that says what and where."""


class ConfigError(FedMRGError):
    """A configuration file or argument is invalid (unknown key, wrong type, missing file)."""


class DataError(FedMRGError):
    """Input data is unreadable or malformed (missing column, unreadable image, empty report)."""
