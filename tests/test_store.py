import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bsym.data import CohortError, CohortWriter, open_cohort


def test_round_trip_keeps_arrays_labels_and_rois(toy_store):
    cohort = toy_store
    assert cohort.manifest["n_subjects"] == 6
    assert cohort.n_rois == 8
    assert set(cohort.labels) >= {"age", "sex", "condition"}
    assert list(cohort.rois["network"][:3]) == ["net0", "net1", "net2"]
    first = cohort.scans[0]
    bold = cohort.bold(first)
    assert bold.shape == (8, 60) and bold.dtype == np.float32
    sc = cohort.sc("sub-00")
    np.testing.assert_array_equal(sc, sc.T)
    assert cohort.subjects["age"].dtype.kind == "f"


def test_reads_are_lazy_memory_maps(toy_store):
    bold = toy_store.bold(toy_store.scans[0])
    assert isinstance(bold, np.memmap)
    assert not bold.flags.writeable
    window = toy_store.window(toy_store.scans[0], 10, 20)
    np.testing.assert_array_equal(window, bold[:, 10:30])
    with pytest.raises(CohortError, match="exceeds the 60 time points"):
        toy_store.window(toy_store.scans[0], 50, 20)


def test_manifest_lists_sha256_of_every_array(toy_store):
    arrays = toy_store.manifest["arrays"]
    assert len(arrays) == 6 + 6  # six scans, six SC matrices
    for rel, meta in arrays.items():
        digest = hashlib.sha256((toy_store.path / rel).read_bytes()).hexdigest()
        assert digest == meta["sha256"]
    assert len(toy_store.manifest_hash) == 64


def test_writing_is_deterministic_apart_from_the_timestamp(tmp_path):
    from bsym.testing import write_toy_store

    a = write_toy_store(tmp_path / "a")
    b = write_toy_store(tmp_path / "b")
    assert a.manifest["arrays"] == b.manifest["arrays"]
    assert a.manifest["tables"] == b.manifest["tables"]


def test_verify_detects_a_changed_array(toy_store):
    rel = toy_store.subjects["bold_file"][2]
    path = toy_store.path / rel
    data = np.load(path)
    data[0, 0] += 1.0
    np.save(path, data)
    with pytest.raises(CohortError, match="checksum differs") as info:
        open_cohort(toy_store.path, verify=True)
    assert "sub-02" in str(info.value) and rel in str(info.value) and "Fix:" in str(info.value)


def test_read_detects_a_changed_table(toy_store):
    with open(toy_store.path / "subjects.parquet", "ab") as fh:
        fh.write(b"junk")
    with pytest.raises(CohortError, match="subjects.parquet does not match"):
        open_cohort(toy_store.path)


def test_read_detects_a_missing_array(toy_store):
    (toy_store.path / toy_store.subjects["sc_file"][1]).unlink()
    with pytest.raises(CohortError, match="file is missing") as info:
        open_cohort(toy_store.path)
    assert "sub-01" in str(info.value)


def test_error_inside_the_writer_leaves_nothing(tmp_path):
    out = tmp_path / "store"
    with pytest.raises(RuntimeError):
        with CohortWriter(out, source={"name": "t"}, atlas="a") as writer:
            writer.add_scan(subject="s1", bold=np.random.rand(4, 20), tr=1.0)
            raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_bad_array_leaves_nothing_and_names_the_subject(tmp_path):
    out = tmp_path / "store"
    bold = np.random.rand(4, 20)
    bad = bold.copy()
    bad[2, 5] = np.nan
    with pytest.raises(CohortError, match="non-finite") as info:
        with CohortWriter(out, source={"name": "t"}, atlas="a") as writer:
            writer.add_scan(subject="s1", bold=bold, tr=1.0, origin="raw/s1.npy")
            writer.add_scan(subject="s2", bold=bad, tr=1.0, origin="raw/s2.npy")
    assert "raw/s2.npy" in str(info.value) and "subject s2" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_killed_write_never_reads_as_a_store(tmp_path):
    out = tmp_path / "store"
    script = textwrap.dedent(f"""
        import os, signal, numpy as np
        from bsym.data import CohortWriter
        with CohortWriter({str(out)!r}, source={{"name": "t"}}, atlas="a") as w:
            for i in range(5):
                w.add_scan(subject=f"s{{i}}", bold=np.random.rand(4, 50), tr=1.0)
            print("written", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "written" in proc.stdout
    assert not out.exists()
    leftovers = list(tmp_path.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".store.partial-")
    with pytest.raises(CohortError, match="no manifest.json"):
        open_cohort(leftovers[0])


def test_existing_store_needs_overwrite(tmp_path, toy_store):
    with pytest.raises(CohortError, match="already exists") as info:
        CohortWriter(toy_store.path, source={"name": "t"}, atlas="a")
    assert "--overwrite" in str(info.value)
    with CohortWriter(toy_store.path, source={"name": "new"}, atlas="a", overwrite=True) as w:
        w.add_scan(subject="x", bold=np.random.rand(3, 10), tr=1.0)
    assert open_cohort(toy_store.path).manifest["source"]["name"] == "new"
    assert [p.name for p in toy_store.path.parent.iterdir()] == ["toy"]


def test_newer_format_is_refused(toy_store):
    manifest = json.loads((toy_store.path / "manifest.json").read_text())
    manifest["format_version"] = 99
    (toy_store.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CohortError, match="upgrade bsym"):
        open_cohort(toy_store.path)


def test_require_checks_labels_window_and_tr(toy_store):
    toy_store.require(labels=["age"], window=60, tr=2.0, matrices=["sc"])
    with pytest.raises(CohortError, match="no label column 'diagnosis'") as info:
        toy_store.require(labels=["diagnosis"])
    assert "available: " in str(info.value)
    with pytest.raises(CohortError, match="shorter than the 100-point window"):
        toy_store.require(window=100)
    with pytest.raises(CohortError, match="expected TR 0.72 s, received 2.0 s"):
        toy_store.require(tr=0.72)
    with pytest.raises(CohortError, match="no 'lengths' matrices"):
        toy_store.require(matrices=["lengths"])


def test_summary_mentions_counts_and_labels(toy_store):
    text = toy_store.summary()
    assert "subjects      6" in text and "label sex" in text and "manifest      sha256" in text


def test_store_files_are_listed_in_the_manifest(toy_store):
    on_disk = {os.path.relpath(os.path.join(root, f), toy_store.path)
               for root, _, files in os.walk(toy_store.path) for f in files}
    listed = set(toy_store.manifest["arrays"]) | set(toy_store.manifest["tables"]) | {"manifest.json"}
    assert on_disk == listed


def test_reading_an_array_checks_its_checksum_once_per_process(toy_store, monkeypatch):
    import bsym.data.store as store

    rel = toy_store.subjects["bold_file"][2]
    path = toy_store.path / rel
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # still a valid array, one value changed
    path.write_bytes(bytes(data))
    cohort = open_cohort(toy_store.path)  # sizes match: opening does not hash arrays
    with pytest.raises(CohortError, match="checksum differs from the manifest") as info:
        cohort.bold(cohort.scans[2])
    assert rel in str(info.value) and "subject sub-02" in str(info.value)
    assert "Fix: restore the file from a backup" in str(info.value)

    hashed = []
    monkeypatch.setattr(store, "file_sha256",
                        lambda file: hashed.append(file) or hashlib.sha256(
                            open(file, "rb").read()).hexdigest())
    fresh = open_cohort(toy_store.path)
    scan = fresh.scans[0]
    for _ in range(3):
        fresh.window(scan, 0, 10)
        open_cohort(toy_store.path).window(scan, 5, 10)
    name = os.path.basename(fresh.row(scan)["bold_file"])
    assert [p.name for p in hashed] == [name]  # six reads, three opens: hashed once
    os.utime(toy_store.path / fresh.row(scan)["bold_file"], ns=(1, 1))  # "modified"
    open_cohort(toy_store.path).window(scan, 0, 10)
    assert [p.name for p in hashed] == [name, name]


def test_manifest_edits_are_caught(toy_store):
    path = toy_store.path / "manifest.json"
    manifest = json.loads(path.read_text())
    for edit, problem in [
        (lambda m: m.update(n_subjects=7), "does not match its content_sha256"),
        (lambda m: m.pop("content_sha256"), "no content_sha256 field"),
        (lambda m: m.update(format_version="2"), "format_version is '2'"),
    ]:
        changed = json.loads(json.dumps(manifest))
        edit(changed)
        path.write_text(json.dumps(changed))
        with pytest.raises(CohortError, match=problem) as info:
            open_cohort(toy_store.path)
        assert "manifest.json" in str(info.value) and "Fix:" in str(info.value)
    path.write_bytes(b"\xff\xfe not json")
    with pytest.raises(CohortError, match="manifest is not valid JSON"):
        open_cohort(toy_store.path)


def test_stores_of_format_1_are_still_read(toy_store):
    path = toy_store.path / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.pop("content_sha256")
    manifest["format_version"] = 1
    for entry in manifest["arrays"].values():
        entry.pop("bytes")
    path.write_text(json.dumps(manifest))
    cohort = open_cohort(toy_store.path, verify=True)
    assert cohort.bold(cohort.scans[0]).shape == (8, 60)


def test_truncated_array_is_caught_on_open(toy_store):
    rel = toy_store.subjects["sc_file"][1]
    path = toy_store.path / rel
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(CohortError, match="as in the manifest, received .* \\(truncated\\)") as info:
        open_cohort(toy_store.path)
    assert rel in str(info.value) and "subject sub-01" in str(info.value)


def test_a_folder_appearing_during_the_write_is_kept(tmp_path):
    out = tmp_path / "store"
    with pytest.raises(CohortError, match="not a cohort store written by bsym"):
        with CohortWriter(out, source={"name": "t"}, atlas="a", overwrite=True) as writer:
            writer.add_scan(subject="s1", bold=np.random.rand(4, 20), tr=1.0)
            out.mkdir()
            (out / "notes.txt").write_text("mine")
    assert [p.name for p in tmp_path.iterdir()] == ["store"]
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_scans_placed_out_of_order_give_the_store_added_in_order(tmp_path):
    rng = np.random.default_rng(0)
    scans = [(f"sub-{i}", rng.standard_normal((4, 30)).astype(np.float32)) for i in range(5)]

    def write(path, order):
        with CohortWriter(path, source={"name": "test"}, atlas="toy") as writer:
            for i in order:
                subject, bold = scans[i]
                writer.place_scan(i, subject=subject, tr=2.0, bold=bold, age=float(i))
        return open_cohort(path)

    in_order = write(tmp_path / "a", range(5))
    shuffled = write(tmp_path / "b", [3, 0, 4, 1, 2])
    assert shuffled.manifest["arrays"] == in_order.manifest["arrays"]
    assert shuffled.manifest["tables"] == in_order.manifest["tables"]
    assert shuffled.scans == [f"sub-{i}_ses-1" for i in range(5)]


def test_placed_scans_must_fill_every_row_once(tmp_path):
    bold = np.random.default_rng(0).standard_normal((4, 30)).astype(np.float32)
    with pytest.raises(CohortError, match=r"no scan was placed at row\(s\) \[1\]"):
        with CohortWriter(tmp_path / "gap", source={"name": "test"}, atlas="toy") as writer:
            writer.place_scan(0, subject="a", tr=2.0, bold=bold)
            writer.place_scan(2, subject="b", tr=2.0, bold=bold)
    assert not (tmp_path / "gap").exists()
    with pytest.raises(ValueError, match="received 0 \\(taken\\)"):
        with CohortWriter(tmp_path / "twice", source={"name": "test"}, atlas="toy") as writer:
            writer.place_scan(0, subject="a", tr=2.0, bold=bold)
            writer.place_scan(0, subject="b", tr=2.0, bold=bold)
