"""Seeded random streams of the evaluation protocols, derived one way.

A stream is seeded by :class:`numpy.random.SeedSequence` entropy: the numbers the draw
belongs to (a seed, a fold, a replicate) followed by a *purpose* word, so that streams of
two purposes differ even for the same numbers. The purpose words below are fixed: a
changed word changes every number drawn for that purpose.
"""

from __future__ import annotations

import numpy as np

#: Label permutations of the probe's ``shuffled_labels`` control.
SHUFFLED_LABELS = 7919
#: Permuted network labels of network identification's chance level.
PERMUTED_NETWORKS = 104729
#: Held-out validation subjects drawn from a pretraining split.
VALIDATION_SUBJECTS = 31337


def random_stream(*numbers, purpose) -> np.random.Generator:
    """The generator of ``purpose`` for ``numbers``: ``default_rng([*numbers, purpose])``.

    Examples
    --------
    >>> random_stream(0, 3, purpose=SHUFFLED_LABELS).permutation(3).tolist()  # doctest: +SKIP
    """
    return np.random.default_rng([*(int(n) for n in numbers), int(purpose)])


def seed_word(*numbers) -> int:
    """An integer seed from ``numbers``: the first 32-bit word their SeedSequence generates
    (for libraries that take an integer seed)."""
    return int(np.random.SeedSequence([int(n) for n in numbers]).generate_state(1)[0])
