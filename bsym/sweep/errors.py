"""The one error type for sweeps that cannot run as asked."""

from bsym.errors import UsageError


class SweepError(UsageError):
    """A search space, study or objective that a sweep cannot use as given.

    The message names the parameter, study or trial concerned, what was expected
    and what was received.
    """
