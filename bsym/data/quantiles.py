"""Exact per-column percentiles of many tables without holding them together.

:func:`column_percentiles` gives, bit for bit, what ``np.percentile(np.concatenate(tables),
q, axis=0)`` gives for float32 tables; past a fixed number of values it reads the tables
three times instead of concatenating them, so the memory it takes stops growing with the
number of rows (the robust scaler of a 10,000-subject cohort would otherwise pool
gigabytes).

How: tables that hold at most ``pool_limit`` values in all are read once into one
column-major array and numpy's percentile selects in place along each row. Larger inputs are
never pooled: a percentile only reads the order statistics next to its rank, and each is
found by radix selection on the float32 bit patterns (mapped to integers in the order of the
values), 12, 10 and 10 bits per pass, reading the tables three times; a pass counts, per
column, the values of the candidate bucket in each of its sub-buckets. numpy then computes
the percentiles from a stand-in column of the same length holding those order statistics at
their ranks, so its interpolation is used as it is.
"""

from __future__ import annotations

import numpy as np

#: (shift, bits) of the key digits found in each pass, most significant first.
_DIGITS = ((20, 12), (10, 10), (0, 10))
_SIGN = np.uint32(0x80000000)
#: Values (rows x columns, all tables) up to which the tables are pooled (256 MB of
#: float32): the default cohort's training folds fit; a large cohort's do not.
POOL_LIMIT = 1 << 26


def sortable_keys(table):
    """uint32 keys in the order of the float32 values of ``table`` (no NaN; -0 as +0)."""
    bits = (np.asarray(table, dtype=np.float32) + np.float32(0.0)).view(np.uint32)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def key_values(keys):
    """The float32 values of :func:`sortable_keys`."""
    keys = np.asarray(keys, dtype=np.uint32)
    return np.where(keys & _SIGN, keys ^ _SIGN, ~keys).view(np.float32)


def _needed_ranks(n, percentiles):
    """Ranks (0-based) around each percentile's position, and the first and last."""
    ranks = {0, n - 1}
    for q in percentiles:
        below = int(np.floor((n - 1) * q / 100.0))
        ranks.update(range(below - 1, below + 3))
    return np.array(sorted(r for r in ranks if 0 <= r < n))


def _count_digits(tables, n_columns, prefixes, shift, bits):
    """Per column and candidate prefix, how many keys fall in each value of the next digit.

    ``prefixes`` (n_columns, n_slots) holds the digits found so far (None: first pass);
    returns counts shaped (n_columns, n_slots, 2**bits).
    """
    n_slots = 1 if prefixes is None else prefixes.shape[1]
    size = 1 << bits
    counts = np.zeros(n_columns * n_slots * size, dtype=np.int64)
    column_base = (np.arange(n_columns) * n_slots)[None, :]
    for table in tables:
        keys = sortable_keys(table)
        digit = ((keys >> np.uint32(shift)) & np.uint32(size - 1)).astype(np.int64)
        if prefixes is None:
            index = (column_base * size + digit).ravel()
        else:
            top = keys >> np.uint32(shift + bits)
            slot = np.full(keys.shape, -1, dtype=np.int64)
            for m in range(n_slots):
                slot[top == prefixes[:, m]] = m
            hit = slot >= 0
            index = ((column_base + slot) * size + digit)[hit]
        counts += np.bincount(index, minlength=len(counts))
    return counts.reshape(n_columns, n_slots, size)


def _select(counts, prefix, offset, slots, bits):
    """Append the next digit of each sought key: the sub-bucket holding its rank."""
    for c in range(len(prefix)):
        slot_of = {int(p): m for m, p in enumerate(slots[c])} if slots is not None else None
        for j in range(prefix.shape[1]):
            m = 0 if slot_of is None else slot_of[int(prefix[c, j])]
            cumulative = np.cumsum(counts[c, m])
            digit = int(np.searchsorted(cumulative, offset[c, j], side="right"))
            offset[c, j] -= cumulative[digit - 1] if digit else 0
            prefix[c, j] = (prefix[c, j] << bits) | digit


def _unique_slots(prefix):
    """Distinct prefixes per column, padded with -1 (no key has it): (n_columns, n_slots)."""
    rows = [np.unique(p) for p in prefix]
    slots = np.full((len(rows), max(len(r) for r in rows)), -1, dtype=np.int64)
    for c, row in enumerate(rows):
        slots[c, :len(row)] = row
    return slots


def column_percentiles(tables, percentiles, n_columns, pool_limit=None):
    """``np.percentile(np.concatenate(tables()), percentiles, axis=0)``, in bounded memory.

    Parameters
    ----------
    tables : callable
        Returns a fresh iterable of float32 tables (rows x ``n_columns``, no NaN) each time
        it is called; it is called once when the tables hold at most ``pool_limit`` values,
        else up to four times (the first read stops at the limit).
    percentiles : sequence of float
        In [0, 100].
    n_columns : int
    pool_limit : int, optional
        Most values pooled in memory (default :data:`POOL_LIMIT`); beyond, the radix
        passes keep memory flat.

    Returns
    -------
    n : int
        Rows in all tables.
    percentiles : ndarray, shape (len(percentiles), n_columns), float64
    """
    limit = POOL_LIMIT if pool_limit is None else pool_limit
    pooled = _pool_columns(tables(), n_columns, limit)
    if pooled is not None:
        return pooled.shape[1], np.percentile(pooled, percentiles, axis=1, overwrite_input=True)
    return _radix_percentiles(tables, percentiles, n_columns)


def _radix_percentiles(tables, percentiles, n_columns):
    """:func:`column_percentiles` by radix selection, reading the tables three times."""
    counts, slots = None, None
    for shift, bits in _DIGITS:
        counts = _count_digits(tables(), n_columns, slots, shift, bits)
        if slots is None:  # the first pass also counts the rows
            n = int(counts[0].sum())
            ranks = _needed_ranks(n, percentiles)
            prefix = np.zeros((n_columns, len(ranks)), dtype=np.int64)
            offset = np.broadcast_to(ranks, prefix.shape).copy()
        _select(counts, prefix, offset, slots, bits)
        slots = _unique_slots(prefix)
    values = key_values(prefix.astype(np.uint32))
    lengths = np.diff(np.append(ranks[1:], n), prepend=0)
    out = np.empty((len(percentiles), n_columns))
    for c in range(n_columns):
        stand_in = np.repeat(values[c], lengths)  # sorted, the true values at the ranks read
        out[:, c] = np.percentile(stand_in, percentiles)
    return n, out


def _pool_columns(tables, n_columns, limit):
    """The tables as one (n_columns, rows) float32 array, or None past ``limit`` values."""
    kept, size = [], 0
    for table in tables:
        size += np.size(table)
        if size > limit:
            return None
        kept.append(table)
    pooled = np.empty((n_columns, size // n_columns), dtype=np.float32)
    row = 0
    for table in kept:
        pooled[:, row:row + len(table)] = np.asarray(table).T
        row += len(table)
    pooled += np.float32(0.0)  # -0 as +0, as the radix keys
    return pooled
