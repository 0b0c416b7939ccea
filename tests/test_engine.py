"""The training loop: schedule, learning, accumulation, determinism, resume, DDP, CLI."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from toy_models import make_model

from bsym.data.dataset import WindowDataset
from bsym.data.preprocess import RobustScaler
from bsym.testing import write_structured_store
from bsym.train import TrainConfig, evaluate_loss, stage_budgets, train, warmup_cosine
from bsym.train.checkpoint import (
    CheckpointError,
    RunExistsError,
    list_checkpoints,
    load_checkpoint,
)
from bsym.train.engine import ResumableSampler
from bsym.train.schedule import WarmupCosine

# Tiny tensors on 2 shared cores: one thread avoids the OpenMP spin-wait overhead.
torch.set_num_threads(1)

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_structured_store(tmp_path_factory.mktemp("engine") / "store")


@pytest.fixture(scope="module")
def dataset(store):
    ds = WindowDataset(store, window=20, labels=["age", "sex"])
    ds.fit_scaler(RobustScaler())
    return ds


def cfg(**kwargs):
    base = {"steps": 8, "batch_size": 4, "lr": 1e-2, "warmup_steps": 2, "progress": False,
            "log_every": 1}
    return TrainConfig(**{**base, **kwargs})


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# -- schedule -----------------------------------------------------------------------------
def test_warmup_then_cosine_values():
    f = [warmup_cosine(s, total_steps=10, warmup_steps=4) for s in range(10)]
    assert f[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # cosine over the remaining 6 steps: 1 at step 4, 0 at the last step
    expected = [0.5 * (1 + math.cos(math.pi * i / 5)) for i in range(6)]
    assert f[4:] == pytest.approx(expected)
    assert f[-1] == pytest.approx(0.0)
    assert warmup_cosine(9, total_steps=10, warmup_steps=0, min_ratio=0.1) == pytest.approx(0.1)
    assert warmup_cosine(0, total_steps=1, warmup_steps=0) == 1.0
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine(0, total_steps=0)

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    sched = WarmupCosine(opt, total_steps=10, warmup_steps=4)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.2 * x for x in f])
    state = sched.state_dict()
    other = WarmupCosine(opt, total_steps=10, warmup_steps=4)
    other.load_state_dict(state)
    assert other.step_count == 10
    with pytest.raises(ValueError, match="total_steps differs"):
        WarmupCosine(opt, total_steps=12, warmup_steps=4).load_state_dict(state)


def test_engine_uses_the_schedule(dataset):
    result = train(make_model(), dataset, cfg(steps=6, warmup_steps=3, lr=0.3))
    expected = [0.3 * warmup_cosine(s, total_steps=6, warmup_steps=3) for s in range(6)]
    assert result.history["lr"] == pytest.approx(expected)


def test_stage_budgets_split_and_explicit():
    model = make_model("staged")
    assert stage_budgets(model, cfg(steps=7)) == [("encoder", 3), ("decoder", 4)]
    assert stage_budgets(model, cfg(stage_steps={"encoder": 5, "decoder": 0})) == [
        ("encoder", 5), ("decoder", 0)]
    with pytest.raises(ValueError, match="expected \\['encoder', 'decoder'\\]"):
        stage_budgets(model, cfg(stage_steps={"encoder": 5}))
    assert stage_budgets(model, cfg(steps=7, label="age")) == [("supervised", 7)]


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict({"stepz": 3})


# -- learning -----------------------------------------------------------------------------
def test_loss_falls_on_a_toy_cohort(dataset):
    model = make_model()
    before = evaluate_loss(model, dataset, batch_size=6)
    result = train(model, dataset, cfg(steps=100, batch_size=6, lr=3e-2, warmup_steps=5,
                                       weight_decay=0.0))
    after = evaluate_loss(model, dataset, batch_size=6)
    losses = result.history["loss"]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert after < 0.5 * before
    assert result.steps == 100 and result.samples_per_s > 0


def test_staged_training_trains_only_the_stage_parameters(dataset):
    model = make_model("staged")
    before = weights(model)
    seen = []

    def watch(info):
        if info.stage_step == 1:
            seen.append((info.stage, weights(info.model)))

    result = train(model, dataset, cfg(stage_steps={"encoder": 3, "decoder": 2}),
                   callbacks=[watch])
    assert result.history["stage"] == ["encoder"] * 3 + ["decoder"] * 2
    (s1, w1), (s2, w2) = seen
    assert s1 == "encoder" and torch.equal(w1["decoder.weight"], before["decoder.weight"])
    assert not torch.equal(w1["encoder.weight"], before["encoder.weight"])
    assert s2 == "decoder" and not torch.equal(w2["decoder.weight"], w1["decoder.weight"])
    after = weights(model)
    assert torch.equal(after["head.weight"], before["head.weight"])  # never in a stage
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_supervised_mode_numeric_and_categorical(dataset):
    model = make_model()
    result = train(model, dataset, cfg(steps=4, label="age", lr=1e-3))
    assert result.history["stage"] == ["supervised"] * 4
    assert all(math.isfinite(x) for x in result.history["loss"])
    model = make_model(n_classes=2)
    result = train(model, dataset, cfg(steps=4, label="sex"), val_dataset=dataset)
    assert result.val_history and result.val_history[-1]["stage"] == "supervised"
    with pytest.raises(ValueError, match="serves labels \\['age', 'sex'\\], not 'diagnosis'"):
        train(make_model(), dataset, cfg(steps=2, label="diagnosis"))


def test_gradient_accumulation_matches_a_larger_batch(dataset):
    big, small = make_model(), make_model()
    train(big, dataset, cfg(steps=6, batch_size=8, accumulate=1))
    train(small, dataset, cfg(steps=6, batch_size=4, accumulate=2))
    for (name, a), b in zip(big.state_dict().items(), small.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_same_seed_same_weights_other_seed_differs(dataset):
    runs = []
    for seed in (0, 0, 1):
        model = make_model(seed=0)
        result = train(model, dataset, cfg(steps=5, seed=seed))
        runs.append((weights(model), result.history["loss"]))
    assert_same_weights(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    assert not torch.equal(runs[0][0]["encoder.weight"], runs[2][0]["encoder.weight"])


def test_worker_processes_give_the_same_result(dataset):
    runs = []
    for workers in (0, 2):
        model = make_model()
        train(model, dataset, cfg(steps=6, num_workers=workers))
        runs.append(weights(model))
    assert_same_weights(*runs)


def test_data_order_is_a_function_of_seed_and_epoch(dataset):
    a = ResumableSampler(dataset, seed=3)
    a.set_epoch(2)
    full = list(a)
    a.set_epoch(2, skip=5)
    assert list(a) == full[5:] and len(a) == len(full) - 5
    b = ResumableSampler(dataset, seed=3)
    b.set_epoch(2)
    assert list(b) == full
    b.set_epoch(3)
    assert list(b) != full


def test_evaluate_loss_is_repeatable_and_leaves_the_rng_alone(dataset):
    model = make_model()
    state = torch.get_rng_state()
    first = evaluate_loss(model, dataset, batch_size=5, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert evaluate_loss(model, dataset, batch_size=5, seed=1) == first
    assert evaluate_loss(model, dataset, batch_size=5, seed=2) != first
    assert model.training


def test_compile_path_runs(dataset):
    model = make_model()
    result = train(model, dataset, cfg(steps=2, compile="eager"))
    assert result.steps == 2


def test_device_selection_and_precision():
    from bsym.train.devices import DeviceError, autocast_dtype, select_device

    assert select_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device(None).type == select_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="'cuda' requested but CUDA is not available"):
            select_device("cuda")
    with pytest.raises(DeviceError, match="unknown device 'gpu0'"):
        select_device("gpu0")
    assert autocast_dtype("cpu", "auto") is None and autocast_dtype("cpu", "fp32") is None
    assert autocast_dtype("cpu", "bf16") == torch.bfloat16


def test_non_finite_loss_stops_before_the_update(dataset, tmp_path):
    model = make_model()

    def poison(info):
        if info.step == 2:
            info.model.encoder.weight.data.fill_(float("nan"))

    with pytest.raises(FloatingPointError, match="non-finite training loss \\(nan\\) at step 3"):
        train(model, dataset, cfg(steps=5, checkpoint_every=1), tmp_path / "run",
              callbacks=[poison])
    assert [s for s, _ in list_checkpoints(tmp_path / "run")][-1] == 2


def test_a_callback_can_stop_training_early_with_the_validation_loss(dataset, tmp_path):
    seen = []

    def early_stop(info):
        seen.append(info.val_loss)
        return info.step == 3

    result = train(make_model(), dataset, cfg(steps=8, eval_every=1), tmp_path / "run",
                   val_dataset=dataset, callbacks=[early_stop])
    assert result.stopped_early and result.steps == 3 and len(seen) == 3
    assert all(v is not None and math.isfinite(v) for v in seen)
    assert [v["loss"] for v in result.val_history] == seen
    assert load_checkpoint(result.final_path)["finished"]


# -- checkpoints and resume ---------------------------------------------------------------
class Interrupt(Exception):
    pass


def _stop_at(step):
    def callback(info):
        if info.step == step:
            raise Interrupt(f"stopped at {step}")
    return callback


def test_exact_resume_after_an_interruption(dataset, tmp_path):
    # 2 stages x 5 steps, 4 batches per epoch: the run crosses epochs and a stage boundary;
    # it is interrupted at step 8 and resumes from the step-6 checkpoint (mid-stage).
    config = cfg(stage_steps={"encoder": 5, "decoder": 5}, checkpoint_every=3)
    whole = make_model("staged")
    expected = train(whole, dataset, config, tmp_path / "whole")

    model = make_model("staged")
    with pytest.raises(Interrupt):
        train(model, dataset, config, tmp_path / "cut", callbacks=[_stop_at(8)])
    steps = [s for s, _ in list_checkpoints(tmp_path / "cut")]
    assert steps == [3, 5, 6]
    assert not (tmp_path / "cut" / "final.pt").exists()
    with pytest.raises(RunExistsError, match="started run.*resume=True"):
        train(make_model("staged"), dataset, config, tmp_path / "cut")

    resumed_model = make_model("staged", seed=123)  # weights come from the checkpoint
    resumed = train(resumed_model, dataset, config, tmp_path / "cut", resume=True)
    assert resumed.resumed_from.name == "step-00000006.pt"
    assert_same_weights(weights(whole), weights(resumed_model))
    assert resumed.final_loss == expected.final_loss
    assert resumed.history == expected.history
    final = load_checkpoint(tmp_path / "cut" / "final.pt")
    assert final["finished"] and final["step"] == 10 and final["optimizer"] is None
    assert_same_weights(final["state_dict"], weights(whole))
    summary = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert summary["steps"] == 10 and summary["final_loss"] == expected.final_loss


def test_finished_run_is_never_overwritten(dataset, tmp_path):
    out = tmp_path / "run"
    model = make_model()
    train(model, dataset, cfg(steps=3), out)
    final = out / "final.pt"
    stamp = final.stat().st_mtime_ns
    with pytest.raises(RunExistsError, match="finished run"):
        train(make_model(), dataset, cfg(steps=3), out)
    again = make_model(seed=5)
    result = train(again, dataset, cfg(steps=3), out, resume=True)
    assert final.stat().st_mtime_ns == stamp  # nothing rewritten
    assert result.steps == 3 and result.final_path == final
    assert_same_weights(weights(again), weights(model))
    with pytest.raises(CheckpointError, match="lr: checkpoint 0.01, this run 0.02"):
        train(make_model(), dataset, cfg(steps=3, lr=2e-2), out, resume=True)


def test_resume_refuses_other_settings_model_and_data(dataset, store, tmp_path,
                                                     toy_store_factory):
    out = tmp_path / "run"
    with pytest.raises(Interrupt):
        train(make_model(), dataset, cfg(checkpoint_every=2), out, callbacks=[_stop_at(3)])
    ckpt = "step-00000002.pt"
    with pytest.raises(CheckpointError, match=f"{ckpt}.*batch_size: checkpoint 4, this run 2"):
        train(make_model(), dataset, cfg(checkpoint_every=2, batch_size=2), out, resume=True)
    with pytest.raises(CheckpointError, match=f"{ckpt}.*model 'toy-mae' \\(preset 'tiny'\\); "
                       "expected model 'toy-mae' \\(preset 'staged'\\)"):
        train(make_model("staged"), dataset, cfg(checkpoint_every=2), out, resume=True)
    with pytest.raises(CheckpointError, match="width: checkpoint 16, expected 32"):
        train(make_model(width=32), dataset, cfg(checkpoint_every=2), out, resume=True)
    short = WindowDataset(store, window=10)
    short.fit_scaler(RobustScaler())
    with pytest.raises(CheckpointError, match=f"{ckpt}: checkpoint expects 20 time points "
                       "\\(window\\); the data gives 10"):
        train(make_model(n_timepoints=10), short, cfg(checkpoint_every=2), out, resume=True)
    wide = WindowDataset(toy_store_factory(n_rois=10), window=20)
    with pytest.raises(CheckpointError, match=f"{ckpt}: checkpoint expects 8 ROIs \\(n_rois\\); "
                       "the data gives 10"):
        train(make_model(n_rois=10), wide, cfg(checkpoint_every=2), out, resume=True)
    other = WindowDataset(toy_store_factory(n_rois=8), window=20)
    with pytest.raises(CheckpointError, match="trained on data with manifest"):
        train(make_model(), other, cfg(checkpoint_every=2), out, resume=True)
    assert [s for s, _ in list_checkpoints(out)] == [2]  # nothing was written


def test_checkpoints_keep_the_last_k(dataset, tmp_path):
    train(make_model(), dataset, cfg(steps=9, checkpoint_every=2, keep_checkpoints=2),
          tmp_path / "run")
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [8, 9]
    assert not list((tmp_path / "run" / "checkpoints").glob(".*tmp"))


KILL_SCRIPT = """
import os, signal, sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from toy_models import make_model
from bsym.data import open_cohort
from bsym.data.dataset import WindowDataset
from bsym.data.preprocess import RobustScaler
from bsym.train import TrainConfig, train

ds = WindowDataset(open_cohort({store!r}), window=20, labels=["age", "sex"])
ds.fit_scaler(RobustScaler())

def kill(info):
    if info.step == 5:
        os.kill(os.getpid(), signal.SIGKILL)

train(make_model(), ds, TrainConfig(**{config!r}), {out!r}, callbacks=[kill])
"""


@pytest.mark.slow
def test_exact_resume_after_sigkill(dataset, store, tmp_path):
    config = cfg(steps=9, checkpoint_every=4)
    plain = {k: v for k, v in config.to_dict().items()}
    out = tmp_path / "killed"
    script = KILL_SCRIPT.format(tests=str(TESTS), store=str(store.path), config=plain,
                                out=str(out))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, check=False,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [s for s, _ in list_checkpoints(out)] == [4]

    whole = make_model()
    expected = train(whole, dataset, config)
    model = make_model(seed=9)
    resumed = train(model, dataset, config, out, resume=True)
    assert_same_weights(weights(whole), weights(model))
    assert resumed.final_loss == expected.final_loss
    assert resumed.history["loss"] == expected.history["loss"]


# -- distributed (gloo, 2 processes on CPU) -----------------------------------------------
def _ddp_worker(rank, world, port, store_path, out, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from bsym.data import open_cohort

    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ds = WindowDataset(open_cohort(store_path), window=20, labels=["age", "sex"])
        ds.fit_scaler(RobustScaler())
        sup = make_model(seed=rank)  # different init per rank: DDP broadcasts rank 0's
        res = train(sup, ds, cfg(steps=4, label="age", lr=1e-3, checkpoint_every=2), out)
        pre = make_model("staged", seed=0)
        train(pre, ds, cfg(steps=4))
        torch.save({"supervised": weights(sup), "pretrain": weights(pre),
                    "history": res.history}, Path(result_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_on_cpu_matches_one_process_with_the_joint_batch(dataset, store, tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "ddp"
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(store.path), str(out), str(tmp_path)),
             nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert_same_weights(r0["supervised"], r1["supervised"])
    assert_same_weights(r0["pretrain"], r1["pretrain"])
    assert r0["history"] == r1["history"]
    # rank 0 wrote the run; rank 1 wrote nothing
    assert (out / "final.pt").exists() and (out / "run.json").exists()
    assert [s for s, _ in list_checkpoints(out)] == [2, 4]
    ckpt = load_checkpoint(out / "checkpoints" / "step-00000002.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert {p.name for p in out.iterdir()} == {"checkpoints", "final.pt", "final.pt.sha256",
                                              "run.json", "snapshots"}
    # same as one process with batch 2 x 4 (the ranks split each permutation in two)
    single = make_model(seed=0)
    train(single, dataset, cfg(steps=4, batch_size=8, label="age", lr=1e-3))
    for key, value in weights(single).items():
        torch.testing.assert_close(r0["supervised"][key], value, rtol=1e-5, atol=1e-6)


# -- command line -------------------------------------------------------------------------
def test_cli_pretrain_writes_final_and_summary_and_refuses_overwrite(store, tmp_path, capsys):
    from bsym.cli import main

    subjects = tmp_path / "subjects.txt"
    subjects.write_text("sub-00\nsub-01\nsub-02\nsub-03\n")
    val = tmp_path / "val.txt"
    val.write_text("sub-05\n")
    out = tmp_path / "run"
    args = ["pretrain", "--model", "toy-mae", "--preset", "staged", "--data", str(store.path),
            "--out", str(out), "--steps", "4", "--batch-size", "4", "--subjects-file",
            str(subjects), "--val-subjects-file", str(val), "--checkpoint-every", "2",
            "--no-tracking", "--quiet", "--device", "cpu"]
    assert main(args) == 0
    assert "pretrained toy-mae (staged) for 4 steps" in capsys.readouterr().out
    summary = json.loads((out / "run.json").read_text())
    assert summary["model"] == "toy-mae" and summary["steps"] == 4
    assert summary["data"]["manifest_hash"] == store.manifest_hash
    assert summary["extra"]["n_train_scans"] == 4 and summary["extra"]["n_val_scans"] == 1
    assert len(summary["val_history"]) == 2
    final = load_checkpoint(out / "final.pt")
    assert final["data"]["n_rois"] == 8 and final["model"]["config"]["n_rois"] == 8
    scaler = RobustScaler.from_state_dict(final["extra"]["scaler"])
    assert scaler.n_scans_ == 4

    assert main(args) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0

    missing = tmp_path / "missing.txt"
    missing.write_text("sub-99\n")
    bad = ["pretrain", "--model", "toy-mae", "--data", str(store.path), "--out",
           str(tmp_path / "other"), "--subjects-file", str(missing), "--no-tracking"]
    assert main(bad) == 2  # a CohortError: exit 2 with the file and the fix
    assert "sub-99" in capsys.readouterr().err
    assert main([*bad[:2], "nosuchmodel", *bad[3:6], str(tmp_path / "x"), "--no-tracking"]) == 2
    assert "unknown model 'nosuchmodel'" in capsys.readouterr().err
    assert not (tmp_path / "other").exists() and not (tmp_path / "x").exists()


def test_cli_import_does_not_load_torch():
    code = ("import sys, bsym.cli; bsym.cli.build_parser(); "
            "print('torch' in sys.modules, 'mlflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]
