"""bsym.report and the ``bsym stats | leaderboard | report`` commands, on a synthetic table."""

import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bsym.cli import main

MODELS = [("bnt", "default"), ("brainnetcnn", "default"), ("brainsymphony", "fmri"),
          ("brainsymphony", "sc"), ("brainsymphony", "fusion")]


def _label(model, view):
    return model if view == "default" else f"{model}:{view}"


@pytest.fixture(scope="module")
def table():
    """3 models (BrainSymphony with 3 views), 2 tasks, 5 folds x 2 seeds, 2 protocols
    (brainnetcnn only fine-tuned), plus network-identification rows."""
    rng = np.random.default_rng(0)
    rows = []
    for protocol in ("linear_probe", "finetune"):
        for m, (model, view) in enumerate(MODELS):
            if protocol == "linear_probe" and model == "brainnetcnn":
                continue
            shift = 0.1 if protocol == "finetune" else 0.0
            for task in ("sex", "age"):
                for seed in (0, 1):
                    for fold in range(5):
                        base = 0.55 + 0.05 * m + shift + rng.normal(0, 0.03)
                        row = dict(model=model, view=view, dataset="sim", task=task,
                                   protocol=protocol, seed=seed, repeat=0, fold=seed * 5 + fold,
                                   n_train=160, n_test=40, runtime_s=1.0, git_sha="a" * 40,
                                   config_hash=f"cfg{m}", manifest_hash="man1",
                                   split_hash=f"split{seed}")
                        if task == "sex":
                            row.update(auroc=base, accuracy=base - 0.05, f1=base - 0.1,
                                       balanced_accuracy=base - 0.04)
                        else:
                            row.update(pearson_r=base - 0.2, mse=1.2 - base, mae=0.9 - base / 2,
                                       r2=base - 0.4)
                        rows.append(row)
    for model, view in (("brainsymphony", "fusion"), ("fc_rows", "fc")):
        rows.append(dict(model=model, view=view, dataset="sim", task="networks",
                         protocol="network_identification", seed=0, repeat=0, fold=0, n_train=50,
                         n_test=100, ari_kmeans=0.4, nmi_kmeans=0.5, knn_accuracy=0.7))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def results_path(table, tmp_path_factory):
    from bsym.evaluate.results import ResultTable

    path = tmp_path_factory.mktemp("results") / "results.parquet"
    ResultTable(path).append(table.to_dict("records"))  # as probes and fine-tuning write it
    return path


def _expected(table, protocol, task, metric):
    rows = table[(table["protocol"] == protocol) & (table["task"] == task)]
    label = [_label(m, v) for m, v in zip(rows["model"], rows["view"])]
    g = rows.assign(label=label).groupby("label")[metric]
    return pd.DataFrame({"mean": g.mean(), "sd": g.std(ddof=1), "n": g.size()})


class _Cells(HTMLParser):
    """Collects the tagged leaderboard cells of the report."""

    def __init__(self):
        super().__init__()
        self.cells, self._open = [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "td" and attrs.get("class") in ("score", "n", "ci"):
            self._open = attrs

    def handle_data(self, data):
        if self._open is not None:
            self.cells.append({**self._open, "text": data})
            self._open = None


# --------------------------------------------------------------------------- report
@pytest.fixture(scope="module")
def built(results_path, tmp_path_factory):
    from bsym.report import build_report

    root = tmp_path_factory.mktemp("report")
    # a confusion figure and an attention contrast table, as bsym netid / attention write them
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.imshow(np.eye(3))
    confusion = root / "confusion.png"
    fig.savefig(confusion)
    plt.close(fig)
    nets = ["DMN", "VIS", "SMN"]
    contrast = pd.DataFrame([
        {"map": "spatial", "family": "net_pair", "feature": f"{a}->{b}", "source": a, "target": b,
         "n": 10, "mean_pre": 0.1, "mean_post": 0.2, "diff": 0.1, "t": float(i - j),
         "effect_size": 0.3, "p": 0.01, "q": 0.03, "significant": i == 0 and j == 1}
        for i, a in enumerate(nets) for j, b in enumerate(nets)])
    attention = root / "attention"
    attention.mkdir()
    contrast.to_csv(attention / "contrast.csv", index=False)
    out = root / "out"
    done = build_report(results_path, out, netid_figures=[confusion], attention=attention)
    return done, out


def test_report_builds_every_figure_and_is_self_contained(built):
    done, out = built
    html = done["html"].read_text()
    assert done["markdown"].stat().st_size > 0
    assert len(done["figures"]) >= 10
    for path in done["figures"]:
        assert Path(path).exists() and Path(path).stat().st_size > 0, path
    for path in done["tables"]:
        assert Path(path).exists() and Path(path).stat().st_size > 0, path
    assert html.count("data:image/png;base64,") == len(done["figures"])
    # no external assets
    assert not re.search(r'(src|href)="(?!data:)', html)
    assert "<link" not in html and "<script" not in html
    names = {Path(p).name for p in done["figures"]}
    assert {"cd_finetune.png", "cd_linear_probe.png", "confusion.png", "netid_scores.png",
            "attention_spatial.png", "brainsymphony_views_finetune.png"} <= names
    assert any(n.startswith("strip_finetune_sim_sex_auroc") for n in names)
    assert any(n.startswith("pairs_linear_probe_sim_age_pearson_r") for n in names)
    assert any(n.startswith("probe_vs_finetune_sex") for n in names)
    # every protocol together too, models labelled "model [protocol]"
    assert "cd_all-protocols.png" in names
    assert any(n.startswith("pairs_all-protocols_sim_sex_auroc") for n in names)
    assert "brainnetcnn [finetune]" in (out / "tables" / "pairwise_auroc_all_protocols.csv").read_text()
    for section in ("Leaderboard", "Critical-difference", "Pairwise comparisons",
                    "fusion vs single-modality", "Linear probe vs fine-tuning",
                    "Network identification", "Attention contrast", "published (paper, HCP-Aging)",
                    "Provenance"):
        assert section in html
    assert "arXiv 2506.18314" in html and "a" * 40 in html and "cfg0" in html
    assert "numpy" in html and "scikit-learn" in html


def test_html_leaderboard_numbers_equal_the_table(built, table):
    done, _ = built
    parser = _Cells()
    parser.feed(done["html"].read_text())
    scores = [c for c in parser.cells if c["class"] == "score"]
    counts = [c for c in parser.cells if c["class"] == "n"]
    assert scores
    checked = 0
    for cell, count in zip(scores, counts):
        expected = _expected(table, cell["data-protocol"], cell["data-task"], cell["data-metric"])
        row = expected.loc[cell["data-model"]]
        mean, sd = (float(x) for x in cell["text"].split("±"))
        assert mean == pytest.approx(row["mean"], abs=5e-5)
        assert sd == pytest.approx(row["sd"], abs=5e-5)
        assert int(count["text"]) == row["n"] == 10
        checked += 1
    # 2 protocols: (4 + 5 labels) x (4 classification + 4 regression metrics)
    assert checked == (4 + 5) * 8


def test_report_omits_sections_without_inputs(results_path, table, tmp_path):
    from bsym.report import build_report

    only = table[(table["protocol"] == "finetune") & (table["model"] != "brainsymphony")]
    done = build_report(only, tmp_path / "r", metrics=["auroc"])
    notes = " ".join(done["notes"])
    assert "fmri / sc / fusion" in notes
    assert "linear_probe and finetune" in notes
    assert "network-identification" in notes and "attention" in notes
    html = done["html"].read_text()
    assert "No attention contrast given" in html
    names = {Path(p).name for p in done["figures"]}
    assert "cd_finetune.png" in names and not any(n.startswith("brainsymphony_views") for n in names)
    for path in done["figures"]:
        assert Path(path).stat().st_size > 0


def test_published_table_is_packaged_and_labelled():
    from bsym.report import published_table

    pub = published_table()
    assert len(pub) == 12
    assert {"model", "variant", "method", "age_mse", "age_rho", "sex_acc", "sex_f1"} <= set(pub.columns)
    fusion = pub[(pub["model"] == "BrainSymphony") & (pub["variant"] == "fusion")
                 & (pub["method"] == "fine-tune")]
    assert fusion["sex_acc"].item() == pytest.approx(0.9404)
    import bsym.report

    first = (Path(bsym.report.__file__).parent / "published.csv").read_text().splitlines()[0]
    assert first.startswith("#") and "2506.18314" in first


# --------------------------------------------------------------------------- CLI
def test_leaderboard_cli_per_protocol_never_mixed(results_path, table, capsys):
    assert main(["leaderboard", str(results_path), "--metric", "auroc"]) == 0
    out = capsys.readouterr().out
    blocks = re.split(r"^== protocol: ", out, flags=re.M)[1:]
    assert [b.split(" ", 1)[0] for b in blocks] == ["finetune", "linear_probe"]
    for block in blocks:
        protocol = block.split(" ", 1)[0]
        expected = _expected(table, protocol, "sex", "auroc")
        lines = {line.split()[0]: line for line in block.splitlines()[3:] if line.strip()}
        assert set(lines) == set(expected.index)
        for model, row in expected.iterrows():
            assert f"{row['mean']:.3f} ± {row['sd']:.3f} (n=10)" in lines[model]
    # brainnetcnn was only fine-tuned: absent from the linear-probe block
    assert "brainnetcnn" in blocks[0] and "brainnetcnn" not in blocks[1]
    assert "network_identification" not in out
    assert main(["leaderboard", str(results_path), "--protocol", "finetune", "--csv",
                 str(results_path.with_name("board.csv"))]) == 0
    out = capsys.readouterr().out
    assert "protocol: finetune" in out and "linear_probe" not in out
    assert "[pearson_r]" in out and "[auroc]" in out
    board = pd.read_csv(results_path.with_name("board.csv"))
    assert set(board["protocol"]) == {"finetune"} and {"mean", "sd", "ci_low", "ci_high"} <= set(board)


def test_leaderboard_mean_differs_from_pooled_protocols(table):
    from bsym.report import leaderboard

    board = leaderboard(table, ["auroc"])
    bnt = board[board["model"] == "bnt"].set_index("protocol")
    assert set(bnt.index) == {"linear_probe", "finetune"}
    assert (bnt["n"] == 10).all()
    pooled = table[(table["model"] == "bnt") & (table["task"] == "sex")]["auroc"].mean()
    assert not np.isclose(bnt.loc["finetune", "mean"], pooled)


def test_stats_cli_writes_tables_and_cd(results_path, tmp_path, capsys):
    out = tmp_path / "stats"
    assert main(["stats", str(results_path), "--metric", "auroc,pearson_r", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("pairwise_auroc.csv", "pairwise_pearson_r.csv",
                 "ranks_auroc-pearson_r_finetune.csv", "ranks_auroc-pearson_r_linear_probe.csv",
                 "cd_auroc-pearson_r_finetune.png", "cd_auroc-pearson_r_linear_probe.png"):
        assert (out / name).stat().st_size > 0, name
        assert name in printed
    pairs = pd.read_csv(out / "pairwise_auroc.csv")
    assert set(pairs["protocol"]) == {"linear_probe", "finetune"}
    assert len(pairs) == 6 + 10  # C(4, 2) + C(5, 2): pairs within a protocol only
    assert not pairs["model_a"].str.contains(r"\[").any()
    ranks = pd.read_csv(out / "ranks_auroc-pearson_r_finetune.csv")
    assert len(ranks) == 5 and (ranks["n_blocks"] == 2).all()


def test_stats_cli_single_block_notes_and_bad_metric(results_path, tmp_path, capsys):
    out = tmp_path / "stats"
    assert main(["stats", str(results_path), "--metric", "auroc", "--out", str(out)]) == 0
    assert "note: rank tests" in capsys.readouterr().out
    assert main(["stats", str(results_path), "--metric", "nope", "--out", str(out)]) == 2
    assert "nope" in capsys.readouterr().err


def test_report_cli(results_path, table, tmp_path, capsys):
    out = tmp_path / "rep"
    netid = tmp_path / "netid.csv"
    table[table["protocol"] == "network_identification"].assign(
        model=["brainlm", "fc_rows"]).to_csv(netid, index=False)
    assert main(["report", "--results", str(results_path), "--out", str(out), "--metric", "auroc",
                 "--netid", str(netid)]) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and "No confusion-matrix figure given" in printed
    assert (out / "report.html").stat().st_size > 0 and (out / "report.md").stat().st_size > 0
    md = (out / "report.md").read_text()
    assert "brainlm:fusion" in md and "fc_rows:fc" in md
    assert "![netid_scores](figures/netid_scores.png)" in md
    assert main(["report", "--results", str(tmp_path / "missing.parquet"), "--out", str(out)]) == 2


def test_cli_module_imports_nothing_heavy():
    code = ("import sys, bsym.cli; bsym.cli.build_parser(); "
            "print(sorted(m for m in ('pandas', 'matplotlib', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_verdict_notes_name_every_metric_and_the_cause():
    import pandas as pd

    from bsym.report.sections import verdict_notes

    base = {"dataset": "sim", "model": "m", "view": "default", "label": "m"}
    verdict = pd.DataFrame([
        {**base, "task": "diagnosis", "metric": "auroc", "protocol": "linear_probe",
         "mean": 0.80, "learned": True},
        {**base, "task": "diagnosis", "metric": "auroc", "protocol": "finetune",
         "mean": 0.78, "learned": True},
        {**base, "task": "age", "metric": "pearson_r", "protocol": "linear_probe",
         "mean": 0.60, "learned": False},
        {**base, "task": "age", "metric": "pearson_r", "protocol": "finetune",
         "mean": 0.46, "learned": False},
    ])
    results = pd.DataFrame({"protocol": ["finetune"] * 2, "model": ["m", "m"],
                            "task": ["diagnosis", "diagnosis"], "single_class": [True, False]})
    notes = verdict_notes(verdict, results)
    assert len(notes) == 2, notes
    assert notes[0].startswith("Fine-tuning of m on diagnosis") and "1 of 2 fold" in notes[0]
    assert "pearson_r 0.460" in notes[1] and "(0.600)" in notes[1]
    assert "did not learn" in notes[1]


def test_supervised_single_class_predictions_are_noted_for_the_real_rows_only():
    import pandas as pd

    from bsym.report.sections import verdict_notes

    results = pd.DataFrame({
        "protocol": ["supervised"] * 5 + ["linear_probe"],
        "control": ["none"] * 3 + ["random_init"] * 2 + ["none"],
        "model": ["bnt"] * 5 + ["m"], "task": ["diagnosis"] * 6,
        "single_class": [True, True, False, True, True, True]})
    no_finetune = pd.DataFrame(columns=["dataset", "task", "metric", "model", "view",
                                        "protocol", "mean"])
    notes = verdict_notes(no_finetune, results)
    assert notes == ["Supervised bnt on diagnosis predicted a single class on 2 of 3 fold(s): "
                     "there its balanced accuracy is 0.5 whatever its AUROC (pred_counts in the "
                     "result table)."]


# --------------------------------------------------------------------------- at a glance
def _tied_as_tested(glance, pairs, alpha=0.05):
    """Check each column's marks against the pairwise tests: best = best mean, tied =
    Holm p >= alpha against it."""
    checked = 0
    for (_, task), column in glance.groupby(["dataset", "task"]):
        higher = bool(column["higher"].iloc[0])
        best = column.loc[column["mean"].idxmax() if higher else column["mean"].idxmin()]
        assert (column["mark"] == "best").sum() == 1 and best["mark"] == "best"
        here = pairs[pairs["task"] == task]
        for row in column[column["mark"] != "best"].itertuples():
            hit = here[[{a, b} == {best["entity"], row.entity}
                        for a, b in zip(here["model_a"], here["model_b"])]]
            assert len(hit) == 1, (best["entity"], row.entity)
            assert (row.mark == "tied") == (hit["p_holm"].item() >= alpha)
            checked += 1
    return checked


def test_report_opens_with_the_glance_matrix(built):
    done, out = built
    html = done["html"].read_text()
    # the first thing after the title is the picture; the verdict table follows it
    first_img = html.index("<img")
    assert 'alt="glance_sim.png"' in html[first_img:first_img + 200]
    assert first_img < html.index("<h2>") and html.index("<h2>Verdict</h2>") > first_img
    assert Path(done["figures"][0]).name == "glance_sim.png"
    assert "## At a glance" in done["markdown"].read_text()
    glance = pd.read_csv(out / "tables" / "glance.csv", na_filter=False)
    # several protocols: compared together, as "model [protocol]"
    glance["entity"] = glance["row"]
    glance["mean"] = glance["mean"].astype(float)
    glance["higher"] = glance["higher"].astype(str) == "True"
    assert set(glance["protocol"]) == {"linear_probe", "finetune"} and len(glance) == 9 * 2
    assert set(glance["mark"]) <= {"best", "tied", ""}
    checked = 0
    for metric in ("auroc", "pearson_r"):
        pairs = pd.read_csv(out / "tables" / f"pairwise_{metric}_all_protocols.csv")
        checked += _tied_as_tested(glance[glance["metric"] == metric], pairs)
    assert checked == 2 * 8
    assert "corrected resampled t-test" in html and "Holm" in html


def test_glance_marks_models_that_did_not_learn(table, tmp_path):
    from bsym.report import build_report

    probes = table[table["protocol"] == "linear_probe"]
    health = pd.DataFrame({"model": ["brainsymphony", "brainsymphony", "brainsymphony"],
                           "view": ["fmri", "sc", "fusion"], "learned": [False, True, True],
                           "reason": ["did not beat interpolation", "", ""]})
    done = build_report(probes, tmp_path / "r", health=health)
    glance = pd.read_csv(tmp_path / "r" / "tables" / "glance.csv", na_filter=False)
    learned = dict(zip(glance["row"], glance["learned"]))
    assert learned["brainsymphony:fmri [linear_probe]"] == "False"
    assert learned["brainsymphony:sc [linear_probe]"] == "True"
    assert learned["bnt [linear_probe]"] == ""  # no health check: no mark
    # one protocol: the pairwise tests name the model as the report does, marked
    glance["entity"] = [r.split(" [linear_probe]")[0] for r in glance["row"]]
    glance.loc[glance["learned"] == "False", "entity"] += " [did not learn]"
    glance["mean"] = glance["mean"].astype(float)
    glance["higher"] = glance["higher"].astype(str) == "True"
    pairs = pd.read_csv(tmp_path / "r" / "tables" / "pairwise_auroc.csv")
    assert "brainsymphony:fmri [did not learn]" in set(pairs["model_a"]) | set(pairs["model_b"])
    assert _tied_as_tested(glance[glance["metric"] == "auroc"], pairs) == 3
    assert Path(done["figures"][0]).name == "glance_sim.png"


def test_rank_tests_say_when_too_few_blocks(built, results_path, tmp_path, capsys):
    done, out = built
    html = done["html"].read_text()
    # 2 blocks (sex, age): no Nemenyi difference can be significant, said beside the diagram
    assert html.count("Too few blocks to conclude: with N = 2") == 3  # 2 protocols + together
    assert "no difference can be significant" in html
    assert "Too few blocks to conclude" in " ".join(done["notes"])
    stats_out = tmp_path / "stats"
    assert main(["stats", str(results_path), "--metric", "auroc,pearson_r", "--out",
                 str(stats_out)]) == 0
    assert "Too few blocks to conclude" in capsys.readouterr().out
    ranks = pd.read_csv(stats_out / "ranks_auroc-pearson_r_finetune.csv")
    assert not ranks["can_be_significant"].any() and (ranks["min_blocks"] == 3).all()


# --------------------------------------------------------------------------- in a browser
def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_report_renders_in_headless_chromium(built, tmp_path):
    """The report loads in a real browser without errors, every figure has a size, and the
    first 1280 x 800 screen is the at-a-glance picture at its own size."""
    import os

    from _chromium import HeadlessChromium, find_chromium

    if find_chromium() is None:
        if os.environ.get("BSYM_REQUIRE_CHROMIUM"):
            pytest.fail("BSYM_REQUIRE_CHROMIUM is set but no chromium is installed "
                        "(.ci/run installs Debian's chromium)")
        pytest.skip("no chromium executable (apt-get install chromium): the report is not "
                    "rendered in a browser")
    done, _ = built
    with HeadlessChromium() as browser:
        page = browser.load(done["html"], width=1280, height=800)
    (tmp_path / "first_screen.png").write_bytes(page["screenshot"])
    assert page["errors"] == []
    images = page["images"]
    assert len(images) == len(done["figures"]) >= 10
    for image in images:
        assert image["complete"] and image["naturalWidth"] > 0 and image["naturalHeight"] > 0, \
            image
        assert image["width"] > 0 and image["height"] > 0, image
    first = images[0]
    assert first["alt"] == "glance_sim.png"
    assert first["top"] + first["height"] <= 800 and first["left"] + first["width"] <= 1280
    assert first["width"] == pytest.approx(first["naturalWidth"], abs=1)  # not shrunk
    assert page["scrollWidth"] <= 1280  # nothing wider than the screen
    assert page["headings"][0]["text"] == "bsym benchmark report"
    assert all(h["top"] > first["top"] for h in page["headings"][1:])
    assert _png_size(page["screenshot"]) == (1280, 800)


def test_report_templates_ship_as_package_data():
    """Every template the report is assembled from is package data of the wheel."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[1]
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setuptools["package-data"]["bsym.report"]
    folder = root / "bsym" / "report"
    templates = [p.relative_to(folder).as_posix() for p in (folder / "templates").iterdir()]
    assert {"templates/report.html", "templates/report.css", "templates/report.md"} <= set(templates)
    assert all(any(fnmatch.fnmatch(t, p) for p in patterns) for t in templates), patterns
