"""Every model at its paper preset, side by side: training-step speed and peak memory.

One step = forward + backward + AdamW step of the model's own objective
(``pretrain_loss`` for self-supervised models, ``supervised_loss`` on a binary
label for supervised ones) on random input shaped as the model's paper preset
(its ROIs and window). Each model runs in its own subprocess, so the peak
resident set (``ru_maxrss``) is its own. Reported: median seconds per step,
samples/s, peak RSS, and the ratio of samples/s to BrainSymphony's measured in
the same run. The connectome + linear model has no gradient step and is left
out. On CUDA (when present) steps run with bf16 autocast and memory is
``max_memory_allocated``.

    python benchmarks/models_speed.py [--batch 2] [--steps 1] [--threads 2]

Batch 2 is the smallest every model trains on (BrainGNN and BrainMass use BatchNorm).

Writes results/benchmarks/models_speed.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("brainsymphony", "brainlm", "brainjepa", "brainmass", "bnt", "brainnetcnn",
          "braingnn", "transformer")


def _worker(name, batch, steps, threads, device_name):
    import torch

    from bsym.models import build

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device(device_name)
    model = build(name, "paper").to(device)
    n_rois = model.config["n_rois"]
    n_time = model.config.get("n_timepoints", 200)
    g = torch.Generator().manual_seed(0)
    sc = torch.rand(batch, n_rois, n_rois, generator=g)
    batch_data = {"bold": torch.randn(batch, n_rois, n_time, generator=g).to(device),
                  "sc": torch.log1p(100 * (sc + sc.transpose(1, 2))).to(device)}
    y = torch.randint(0, 2, (batch,), generator=g).to(device)
    if getattr(model, "needs_gradients", False):  # Brain-JEPA's gradient positions
        from bsym.models.gradients import fc_gradients, group_fc

        series = [x.numpy() for x in torch.randn(4, n_rois, n_time, generator=g)]
        model.set_gradients(fc_gradients(group_fc(series), model.n_gradients))
    supervised = getattr(model, "objective", "self_supervised") == "supervised"
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    mask_gen = torch.Generator(device=device).manual_seed(0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None

    def step():
        optimizer.zero_grad(set_to_none=True)
        if autocast is not None:
            with autocast:
                loss = model.supervised_loss(batch_data, y) if supervised else \
                    model.pretrain_loss(batch_data, generator=mask_gen)
        else:
            loss = model.supervised_loss(batch_data, y) if supervised else \
                model.pretrain_loss(batch_data, generator=mask_gen)
        loss.backward()
        optimizer.step()
        if hasattr(model, "after_optimizer_step"):
            model.after_optimizer_step(1, 10)
        if device.type == "cuda":
            torch.cuda.synchronize()

    model.train()
    step()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak_gb = torch.cuda.max_memory_allocated() / 1e9
    else:
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux
    seconds = statistics.median(times)
    return {"model": name, "n_rois": n_rois, "n_timepoints": n_time, "batch": batch,
            "objective": "supervised" if supervised else "self_supervised",
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "s_per_step": seconds, "samples_per_s": batch / seconds, "peak_gb": peak_gb,
            "device": str(device)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1, help="timed steps after one warm-up")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        result = _worker(args.worker, args.batch, args.steps, args.threads, args.device)
        print("RESULT " + json.dumps(result))
        return
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    rows = []
    for name in args.models.split(","):
        cmd = [sys.executable, __file__, "--worker", name, "--batch", str(args.batch),
               "--steps", str(args.steps), "--threads", str(args.threads),
               "--device", args.device]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False,
                                  timeout=args.timeout)
        except subprocess.TimeoutExpired:
            rows.append({"model": name, "error": f"over {args.timeout} s"})
            print(f"{name}: over {args.timeout} s", flush=True)
            continue
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            rows.append({"model": name, "error": proc.stderr.strip().splitlines()[-1:]})
            print(f"{name}: failed: {rows[-1]['error']}", flush=True)
            continue
        rows.append(json.loads(line[0][7:]))
        print(f"{name}: {rows[-1]['s_per_step']:.2f} s/step", flush=True)
    base = next((r for r in rows if r["model"] == "brainsymphony" and "error" not in r), None)
    for r in rows:
        if base is not None and "error" not in r:
            r["speed_vs_brainsymphony"] = r["samples_per_s"] / base["samples_per_s"]
            r["memory_vs_brainsymphony"] = r["peak_gb"] / base["peak_gb"]
    report = {"benchmark": "models_speed",
              "machine": {"cpus": os.cpu_count(), "threads": args.threads,
                          "platform": platform.platform(), "device": args.device},
              "setup": {"batch": args.batch, "timed_steps": args.steps, "preset": "paper"},
              "results": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "models_speed.json").write_text(json.dumps(report, indent=2))
    print(f"\n{'model':<14}{'input':>10}{'params':>9}{'s/step':>9}{'samples/s':>11}"
          f"{'peak GB':>9}{'speed x':>9}{'memory x':>10}")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<14} failed")
            continue
        print(f"{r['model']:<14}{r['n_rois']:>5}x{r['n_timepoints']:<4}{r['params_m']:>8.1f}M"
              f"{r['s_per_step']:>9.2f}{r['samples_per_s']:>11.2f}{r['peak_gb']:>9.2f}"
              f"{r.get('speed_vs_brainsymphony', float('nan')):>9.2f}"
              f"{r.get('memory_vs_brainsymphony', float('nan')):>10.2f}")
    print(f"wrote {out / 'models_speed.json'}")


if __name__ == "__main__":
    main()
