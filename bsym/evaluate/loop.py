"""The evaluation loop every protocol shares: read a unit's rows back, or compute them.

A protocol cuts its work into *units* (an outer fold; a fold of one label permutation; a
whole network identification) and says two things about a unit: the result-table keys of
the rows it gives, and how to compute those rows. :func:`run_units` owns everything else,
once for every protocol: the table is read once; a unit whose rows are all stored (same
key columns, same data, split and configuration) is read back, any other is computed; the
rows computed are appended to the table batch by batch, so an interrupted evaluation
resumes after its last finished batch. Nothing stored is ever recomputed unless forced,
and a unit computed earlier in the same loop is not computed again.
"""

from __future__ import annotations

from bsym.evaluate.results import StoredRows, check_keys


def run_units(batches, keys, compute, *, results=None, force=False, bar=None):
    """Rows of every unit: read back from ``results`` when stored, else computed and appended.

    Parameters
    ----------
    batches : iterable of sequences
        Units of work, in order. The rows a batch computes are appended to ``results`` in
        one write (a batch of one unit saves each unit as soon as it is done).
    keys : callable
        ``keys(unit)`` -> the keys of the unit's rows (dicts of the key columns and the
        provenance columns); the unit is read back only when every one is stored.
    compute : callable
        ``compute(unit, unit_keys)`` -> the unit's rows.
    results : ResultTable, optional
        Without it every unit is computed and nothing is written.
    force : bool
        Compute every unit, stored or not (the rows replace the stored ones).
    bar : tqdm, optional
        A progress bar advanced by one per unit.

    Returns
    -------
    rows : list of dict
        Per batch, the rows read back, then those computed, each in unit order.
    computed : list of dict
        The rows computed now.
    """
    stored = results.stored() if results is not None and not force else StoredRows()
    rows, computed = [], []
    for batch in batches:
        fresh = []
        for unit in batch:
            unit_keys = keys(unit)
            check_keys(unit_keys)
            found = [stored.current(key) for key in unit_keys]
            if found and all(row is not None for row in found):
                rows.extend(found)
            else:
                fresh.extend(compute(unit, unit_keys))
            if bar is not None:
                bar.update(1)
        if results is not None and fresh:
            results.append(fresh)
        stored.add(fresh)
        rows.extend(fresh)
        computed.extend(fresh)
    return rows, computed
