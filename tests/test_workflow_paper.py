"""workflow/config/paper.yaml: the paper-size plan is valid and asks for what it says.

Nothing runs here (a paper-size run needs a GPU and hours): the config is validated against
the schema and the workflow is dry-run with the shell commands printed, which is where
each job's `bsym` options can be read.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from bsym.data.simulate import DEFAULT_SITE_TRS
from bsym.models import get_spec

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "workflow/config/paper.yaml"
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"


def load(path):
    return yaml.safe_load(path.read_text())


def effective_window(model, entry, shell):
    """The window a pretrain job uses: --window, else the preset's n_timepoints."""
    match = re.search(r"--window (\d+)", shell)
    if match:
        return int(match.group(1))
    return get_spec(model).presets[entry.get("preset", "tiny")]["n_timepoints"]


def test_paper_config_validates_and_is_paper_sized():
    cfg = load(PAPER)
    validate(cfg, str(SCHEMA))  # raises on any key the schema does not allow

    (name, data), = cfg["datasets"].items()
    assert data["source"] == "simulate" and data["rois"] == 450
    assert data["subjects"] >= 500 and data["sessions"] == 2
    # the shortest scan, resampled to the target TR, still holds several 200-point windows
    shortest = data["timepoints"] * min(DEFAULT_SITE_TRS[:data["sites"]]) / data["target_tr"]
    assert shortest >= 4 * cfg["pretrain"]["window"] == 4 * 200

    default = load(ROOT / "workflow/config/default.yaml")
    assert list(cfg["models"]) == list(default["models"])  # every self-supervised model
    assert all(entry["preset"] == "paper" for entry in cfg["models"].values())
    assert cfg["pretrain"]["device"] in ("cuda", "auto")
    assert cfg["pretrain"]["batch_size"] >= 16 and cfg["pretrain"]["steps"] >= 10_000
    assert set(cfg["tasks"]) == set(default["tasks"])
    splits = cfg["splits"]
    assert splits["folds"] * splits["repeats"] * len(splits["seeds"]) >= 10
    # the supervised baselines of default.yaml, at paper size, and a fine-tuned BrainSymphony
    assert set(cfg["supervised"]["models"]) == set(default["supervised"]["models"])
    assert all(e["preset"] == "paper" for e in cfg["supervised"]["models"].values())
    assert "brainsymphony" in cfg["finetune"]["models"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("paper")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", "-p",
         "--configfile", str(PAPER)], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert not (cwd / "results").exists()  # a plan only: no job ran
    return proc.stdout + proc.stderr


def jobs(text, rule):
    """(wildcards, resources, shell command) of every planned job of a rule."""
    found = []
    for block in text.split("\n\n"):
        if not re.search(rf"^rule {rule}:$", block, re.MULTILINE):
            continue
        fields = dict(re.findall(r"^\s*(wildcards|resources|Shell command): (.*)$", block,
                                 re.MULTILINE))
        wildcards = dict(re.findall(r"(\w+)=([^,\s]+)", fields.get("wildcards", "")))
        found.append((wildcards, fields.get("resources", ""), fields["Shell command"]))
    return found


def test_paper_dry_run_pretrains_every_model_at_its_paper_preset_on_a_gpu(dry_run):
    cfg = load(PAPER)
    pretrain = jobs(dry_run, "pretrain")
    assert sorted(w["model"] for w, _, _ in pretrain) == sorted(cfg["models"])
    for wildcards, resources, shell in pretrain:
        model = wildcards["model"]
        entry = cfg["models"][model]
        assert f"--model {model} " in shell
        assert "--preset paper " in shell
        assert f"--device {cfg['pretrain']['device']} " in shell
        assert f"--batch-size {cfg['pretrain']['batch_size']} " in shell
        assert f"--steps {entry.get('steps', cfg['pretrain']['steps'])} " in shell
        assert "--target-tr 0.8 " in shell
        assert "gpu=1" in resources
        window = effective_window(model, entry, shell)
        assert window == (entry.get("window") or cfg["pretrain"]["window"]), (model, shell)
        patch = get_spec(model).presets["paper"].get("patch_size")
        assert patch is None or window % patch == 0, (model, window, patch)

    simulate, = [s for _, _, s in jobs(dry_run, "prepare_dataset")]
    assert "--rois 450 " in simulate and f"--subjects {cfg['datasets']['sim450']['subjects']} " \
        in simulate
    embeds = jobs(dry_run, "embed")
    assert len(embeds) == len(cfg["models"])
    assert all(f"--device {cfg['embed']['device']} " in s for _, _, s in embeds)


def test_paper_dry_run_trains_the_supervised_baselines_and_fine_tunes_on_the_gpu(dry_run):
    cfg = load(PAPER)
    supervised = jobs(dry_run, "supervised")
    assert {w["baseline"] for w, _, _ in supervised} == set(cfg["supervised"]["models"])
    for _, _, shell in supervised:
        assert "--preset paper " in shell and "--window 200 " in shell
        assert f"--device {cfg['supervised']['training']['device']} " in shell
    finetune = jobs(dry_run, "finetune")
    assert {w["model"] for w, _, _ in finetune} == set(cfg["finetune"]["models"])
    assert all(f"--device {cfg['finetune']['training']['device']} " in s for _, _, s in finetune)
    attention = jobs(dry_run, "attention")
    assert {w["model"] for w, _, _ in attention} == set(cfg["attention"]["models"])
    assert all("--levels pre,post " in s for _, _, s in attention)


def test_paper_dry_run_plans_every_probe_over_repeated_folds(dry_run):
    cfg = load(PAPER)
    n_models, n_tasks, n_seeds = len(cfg["models"]), len(cfg["tasks"]), len(cfg["splits"]["seeds"])
    n_features = len(cfg["connectome_features"])
    n_baselines, n_finetune = len(cfg["supervised"]["models"]), len(cfg["finetune"]["models"])
    counts = {rule: len(jobs(dry_run, rule)) for rule in
              ("task_split", "probe_embeddings", "probe_connectome", "supervised", "finetune",
               "netid", "result_table", "report")}
    assert counts == {"task_split": n_tasks * n_seeds,
                      # one job runs every task of a model (or baseline) and seed
                      "probe_embeddings": n_models * n_seeds,
                      "probe_connectome": n_features * n_seeds,
                      "supervised": n_baselines * n_seeds,
                      "finetune": n_finetune * n_tasks * n_seeds,
                      "netid": n_models, "result_table": 1, "report": 1}
    # every task is per subject: each job runs one command per task
    for rule in ("probe_embeddings", "probe_connectome", "supervised"):
        assert all(s.count("--command ") == n_tasks for _, _, s in jobs(dry_run, rule)), rule
    folds = f"--n-folds {cfg['splits']['folds']} --repeats {cfg['splits']['repeats']} "
    assert all(folds in s for _, _, s in jobs(dry_run, "task_split"))
    features = {w["features"] for w, _, _ in jobs(dry_run, "probe_connectome")}
    assert features == set(cfg["connectome_features"])
