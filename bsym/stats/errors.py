"""The one error type for result tables that cannot be compared as asked."""

from bsym.errors import BsymError


class StatsError(BsymError, ValueError):
    """A result table (or score vector) that a test cannot use as given.

    The message says what was expected, what was received and, where there is
    one, the row concerned (model, dataset, task, protocol, seed, fold).
    """
