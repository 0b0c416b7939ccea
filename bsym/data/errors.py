"""The one error type for bad input data.

Every problem found in raw inputs or in a cohort store is raised as a
:class:`CohortError` that names the file, the subject (where there is one) and
the fix, so a user can act on the message alone.
"""

from __future__ import annotations

import os

from bsym.errors import BsymError


class CohortError(BsymError, ValueError):
    """Invalid input data or an invalid cohort store.

    Parameters
    ----------
    problem : str
        What is wrong, with the expected and the received value.
    file : str or os.PathLike, optional
        The file (or directory) the problem was found in.
    subject : str, optional
        The subject (or scan) concerned.
    fix : str, optional
        What the user should do about it.
    """

    def __init__(self, problem, *, file=None, subject=None, fix=None):
        self.problem = problem
        self.file = os.fspath(file) if file is not None else None
        self.subject = None if subject is None else str(subject)
        self.fix = fix
        super().__init__(self._format())

    def _format(self) -> str:
        parts = []
        if self.file:
            parts.append(self.file)
        if self.subject:
            parts.append(f"subject {self.subject}")
        head = ": ".join(parts)
        message = f"{head}: {self.problem}" if head else self.problem
        if self.fix:
            message += f". Fix: {self.fix}"
        return message
