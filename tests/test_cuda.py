"""CUDA paths: SDPA cross-attention, bf16 autocast, the engine on a GPU, compile, DDP.

Skipped where no GPU is visible (CI has none). On a GPU machine:
``pytest -m cuda tests/test_cuda.py``.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bsym.data.dataset import WindowDataset
from bsym.data.preprocess import RobustScaler
from bsym.models import build
from bsym.models.masking import fmri_masks
from bsym.testing import write_toy_store
from bsym.train import TrainConfig, train
from bsym.train.checkpoint import list_checkpoints, load_checkpoint

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ROOT = Path(__file__).resolve().parents[1]
R, T = 12, 40


@pytest.fixture(autouse=True)
def _full_fp32():
    """Plain fp32 matrix products (no TF32) so CUDA can be compared with CPU float64."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def rel_err(out, ref):
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.isfinite(out).all()
    return float((out - ref).norm() / ref.norm())


def tiny(branches="both", **kw):
    torch.manual_seed(0)
    return build("brainsymphony", "tiny", n_rois=R, n_timepoints=T, branches=branches, **kw)


def batch(b=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(b, R, R, generator=gen)
    a = (a + a.transpose(1, 2)) / 2
    a = torch.where(a > 0.4, a, torch.zeros(()))
    a.diagonal(dim1=1, dim2=2).zero_()
    return {"bold": torch.randn(b, R, T, generator=gen), "sc": a}


def on(device, tensors, dtype=None):
    return {k: v.to(device=device, dtype=dtype if v.is_floating_point() and dtype else v.dtype)
            for k, v in tensors.items()}


def test_auto_attention_is_sdpa_on_cuda_and_factorised_on_cpu():
    perceiver = tiny().perceiver
    assert perceiver._impl(torch.device("cuda")) == "sdpa"
    assert perceiver._impl(torch.device("cpu")) == "factorised"


@pytest.mark.parametrize("impl", ["sdpa", "factorised", "naive"])
def test_cross_attention_on_cuda_matches_cpu_float64(impl):
    model = tiny(branches="fmri")
    ref = copy.deepcopy(model).double()
    ref.perceiver.attention_impl = "naive"
    model.cuda().perceiver.attention_impl = impl
    x = batch(seed=2)["bold"]
    masks = fmri_masks(3, R, T, 0.15, torch.Generator().manual_seed(3))
    out = model.reconstruct_fmri({"bold": x.cuda()}, on("cuda", masks))
    expected = ref.reconstruct_fmri({"bold": x.double()}, masks)
    assert rel_err(out, expected) < 1e-4
    out.square().mean().backward()
    expected.square().mean().backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        if q.grad is not None and q.grad.norm() > 1e-8:  # the key bias's is 0 (shift invariance)
            assert rel_err(p.grad, q.grad) < 1e-3, name


def test_whole_model_embeddings_on_cuda_match_cpu():
    model = tiny()
    ref = copy.deepcopy(model).double().eval()
    model.cuda().eval()
    data = batch(seed=4)
    with torch.no_grad():
        got = model.embed(on("cuda", data))
        want = ref.embed(on("cpu", data, torch.float64))
    assert set(got) == {"fmri", "sc", "fusion"}
    for view in got:
        assert rel_err(got[view].subject, want[view].subject) < 1e-4, view
        assert rel_err(got[view].roi, want[view].roi) < 1e-4, view


@pytest.mark.parametrize("stage", ["encoders", "perceiver", "joint"])
def test_bf16_autocast_loss_and_gradients_track_fp32(stage):
    model = tiny().cuda()
    data = on("cuda", batch(b=4, seed=5))
    losses, grads = {}, {}
    for precision in ("fp32", "bf16"):
        model.zero_grad(set_to_none=True)
        gen = torch.Generator(device="cuda").manual_seed(7)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model.pretrain_loss(data, generator=gen, stage=stage)
        loss.float().backward()
        losses[precision] = loss.item()
        grads[precision] = torch.cat([p.grad.flatten() for p in model.stage_parameters(stage)
                                      if p.grad is not None])
    assert abs(losses["bf16"] - losses["fp32"]) / abs(losses["fp32"]) < 2e-2
    assert rel_err(grads["bf16"], grads["fp32"]) < 5e-2


@pytest.mark.parametrize("branches", ["fmri", "sc", "both"])
def test_paper_preset_trains_a_step_in_bf16(branches):
    torch.manual_seed(0)
    model = build("brainsymphony", "paper", branches=branches).cuda()
    p = model.n_rois, model.n_timepoints
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(2, p[0], p[0], generator=gen)
    data = on("cuda", {"bold": torch.randn(2, *p, generator=gen), "sc": (a + a.mT) / 2})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model.pretrain_loss(data, generator=torch.Generator("cuda").manual_seed(0))
    loss.float().backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(q).all() for q in model.parameters())


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_toy_store(tmp_path_factory.mktemp("cuda") / "store", n_subjects=8, n_rois=R,
                           n_timepoints=80)


@pytest.fixture(scope="module")
def dataset(store):
    ds = WindowDataset(store, window=T, stride=20)
    ds.fit_scaler(RobustScaler())
    return ds


def _cfg(**kw):
    base = {"steps": 12, "batch_size": 4, "lr": 1e-3, "warmup_steps": 2, "progress": False,
            "checkpoint_every": 4, "device": "cuda", "precision": "auto"}
    return TrainConfig(**{**base, **kw})


class Interrupt(Exception):
    pass


def test_engine_trains_on_cuda_in_bf16_and_resumes(dataset, tmp_path):
    whole_model = tiny()
    whole = train(whole_model, dataset, _cfg(), tmp_path / "whole")
    assert next(whole_model.parameters()).device.type == "cuda"
    assert len(whole.history["loss"]) == 12 and all(map(torch.isfinite,
                                                       torch.tensor(whole.history["loss"])))

    def stop_at(info):
        if info.step == 9:
            raise Interrupt

    cut_model = tiny()
    with pytest.raises(Interrupt):
        train(cut_model, dataset, _cfg(), tmp_path / "cut", callbacks=[stop_at])
    assert [s for s, _ in list_checkpoints(tmp_path / "cut")] == [4, 8]
    resumed_model = tiny()
    resumed = train(resumed_model, dataset, _cfg(), tmp_path / "cut", resume=True)
    assert resumed.resumed_from.name == "step-00000008.pt"
    # CUDA kernels may sum in another order from run to run: close, not bit-equal
    torch.testing.assert_close(torch.tensor(resumed.history["loss"]),
                               torch.tensor(whole.history["loss"]), rtol=1e-3, atol=1e-4)
    for (name, a), b in zip(whole_model.state_dict().items(),
                            resumed_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)
    final = load_checkpoint(tmp_path / "cut" / "final.pt")  # weights_only, mapped to CPU
    assert all(v.device.type == "cpu" for v in final["state_dict"].values())
    assert final["config"]["precision"] == "auto"


def test_compile_with_inductor_matches_eager(dataset):
    budgets = {"encoders": 0, "perceiver": 0, "joint": 4}
    eager = train(tiny(), dataset, _cfg(stage_steps=budgets, checkpoint_every=0))
    compiled = train(tiny(), dataset, _cfg(stage_steps=budgets, checkpoint_every=0,
                                           compile=True))
    torch.testing.assert_close(torch.tensor(compiled.history["loss"]),
                               torch.tensor(eager.history["loss"]), rtol=2e-2, atol=1e-3)


def test_cli_pretrain_picks_cuda_and_bf16(store, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "bsym", "pretrain", "--model", "brainsymphony", "--data",
           str(store.path), "--out", str(out), "--window", str(T), "--steps", "9",
           "--batch-size", "4", "--no-tracking", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, check=True, env=env, cwd=tmp_path)
    summary = json.loads((out / "run.json").read_text())
    assert summary["train_config"]["device"] == "auto"
    final = load_checkpoint(out / "final.pt")
    assert final["finished"] and final["step"] == 9
    assert summary["samples_per_s"] > 0


def _ddp_worker(rank, world, port, store_path, result_dir):
    import torch.distributed as dist

    from bsym.data import open_cohort

    # two ranks share the one GPU: LOCAL_RANK 0 for both; gloo carries CUDA tensors
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ds = WindowDataset(open_cohort(store_path), window=T, stride=20)
        ds.fit_scaler(RobustScaler())
        torch.manual_seed(rank)  # different initial weights: DDP broadcasts rank 0's
        model = build("brainsymphony", "tiny", n_rois=R, n_timepoints=T)
        res = train(model, ds, _cfg(steps=6, precision="fp32", checkpoint_every=0))
        torch.save({"weights": {k: v.cpu() for k, v in model.state_dict().items()},
                    "history": res.history}, Path(result_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_two_ranks_on_cuda_keep_identical_weights(store, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(store.path), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["history"] == r1["history"]
    for key, value in r0["weights"].items():
        torch.testing.assert_close(r1["weights"][key], value, rtol=0, atol=0, msg=key)
