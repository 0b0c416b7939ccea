"""The error of report inputs that cannot be reported."""

from bsym.errors import BsymError


class ReportError(BsymError):
    """A result table or report input that cannot be reported.

    Errors in reading the result table itself are :class:`bsym.stats.StatsError`
    (:mod:`bsym.stats.table`).
    """
