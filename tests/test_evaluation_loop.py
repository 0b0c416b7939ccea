"""The loop every protocol shares (read back or compute, append per batch) and the seeded
random streams of the evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from bsym.evaluate import EvaluationError
from bsym.evaluate.loop import run_units
from bsym.evaluate.results import ResultTable, StoredRows
from bsym.evaluate.seeding import (
    PERMUTED_NETWORKS,
    SHUFFLED_LABELS,
    VALIDATION_SUBJECTS,
    random_stream,
    seed_word,
)

PROVENANCE = {"config_hash": "c1", "manifest_hash": "m1", "split_hash": "s1"}


def key(fold, **changes):
    return {"model": "toy", "view": "default", "dataset": "d", "task": "t",
            "protocol": "linear_probe", "seed": 0, "fold": fold, **PROVENANCE, **changes}


class Counting:
    """A protocol whose unit is a fold index; it counts what it computes."""

    def __init__(self):
        self.computed = []

    def keys(self, fold):
        return [key(fold)]

    def rows(self, fold, keys):
        self.computed.append(fold)
        return [{**keys[0], "accuracy": fold / 10}]


class CountingTable(ResultTable):
    def __init__(self, path):
        super().__init__(path)
        self.writes = 0

    def append(self, rows):
        self.writes += 1
        return super().append(rows)


def test_stored_units_are_read_back_the_others_computed(tmp_path):
    table = CountingTable(tmp_path / "r.parquet")
    first = Counting()
    rows, computed = run_units([[0], [2]], first.keys, first.rows, results=table)
    assert first.computed == [0, 2] and len(computed) == 2 and table.writes == 2
    again = Counting()
    rows, computed = run_units([[0, 1, 2]], again.keys, again.rows, results=table)
    assert again.computed == [1] and [r["fold"] for r in computed] == [1]
    # per batch: the rows read back, then those computed
    assert [r["fold"] for r in rows] == [0, 2, 1]
    assert table.writes == 3                       # one write for the batch
    assert sorted(table.read()["fold"]) == [0, 1, 2]


def test_force_recomputes_and_changed_provenance_is_not_read_back(tmp_path):
    table = ResultTable(tmp_path / "r.parquet")
    unit = Counting()
    run_units([[0]], unit.keys, unit.rows, results=table)
    run_units([[0]], unit.keys, unit.rows, results=table, force=True)
    assert unit.computed == [0, 0]

    def other_config(fold):
        return [key(fold, config_hash="c2")]

    run_units([[0]], other_config, unit.rows, results=table)
    assert unit.computed == [0, 0, 0]
    assert table.read()["config_hash"].tolist() == ["c2"]


def test_a_unit_is_read_back_only_whole_and_never_computed_twice_in_one_loop(tmp_path):
    table = ResultTable(tmp_path / "r.parquet")
    computed = []

    def keys(unit):
        return [key(0, replicate=r) for r in range(unit)]

    def rows(unit, unit_keys):
        computed.append(unit)
        return [{**k, "accuracy": 0.5} for k in unit_keys]

    run_units([[1]], keys, rows, results=table)
    run_units([[2]], keys, rows, results=table)    # one of its two rows is missing
    assert computed == [1, 2]
    run_units([[2], [2]], keys, rows, results=table)
    assert computed == [1, 2]
    run_units([[3], [3]], keys, rows, results=None)
    assert computed == [1, 2, 3]                   # not twice, also without a table


def test_a_key_without_every_key_column_is_refused_before_any_work():
    def keys(unit):
        return [{"model": "toy", "fold": unit}]

    def rows(unit, unit_keys):
        raise AssertionError("computed")

    with pytest.raises(EvaluationError, match="lacks key column"):
        run_units([[0]], keys, rows)


def test_stored_rows_keep_the_last_row_of_a_key():
    stored = StoredRows([{**key(0), "accuracy": 0.1}, {**key(0), "accuracy": 0.2}])
    assert stored.current(key(0))["accuracy"] == 0.2
    assert stored.current(key(0, split_hash="s2")) is None
    assert stored.current(key(1)) is None


def test_random_streams_are_the_seed_sequences_of_numbers_and_purpose():
    assert len({SHUFFLED_LABELS, PERMUTED_NETWORKS, VALIDATION_SUBJECTS}) == 3
    np.testing.assert_array_equal(random_stream(2, 1, purpose=SHUFFLED_LABELS).random(4),
                                  np.random.default_rng([2, 1, SHUFFLED_LABELS]).random(4))
    assert not np.array_equal(random_stream(0, purpose=SHUFFLED_LABELS).random(4),
                              random_stream(0, purpose=PERMUTED_NETWORKS).random(4))


def test_seed_word_gives_the_split_and_sweep_seeds():
    from bsym.evaluate.splits import _seed
    from bsym.sweep.sampling import trial_seed

    for parts in [(0, 0), (3, 1), (7, 2), (0, 1, 2, 1)]:
        assert _seed(*parts) == seed_word(*parts) % 2**31
    for seed, number in [(0, 0), (5, 9), (123, 4)]:
        assert trial_seed(seed, number) == seed_word(seed, number)
