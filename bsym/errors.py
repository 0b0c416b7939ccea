"""The base of every error bsym reports to a user as one line (CLI exit status 2)."""


class BsymError(Exception):
    """Bad input or state the user can fix: the message says what, where and how."""


class UsageError(BsymError, ValueError):
    """A command was asked for something it cannot do with these arguments."""
