"""The BrainSymphony speed benchmark's bookkeeping: variants, and ratios to the public code."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def speed():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "brainsymphony_speed.py"
    spec = importlib.util.spec_from_file_location("brainsymphony_speed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(impl, variant, branch, batch, s, peak, **extra):
    return {"implementation": impl, "variant": variant, "preset": "paper", "branch": branch,
            "batch": batch, "s_per_step": s, "cpu_s_per_step": 2 * s, "peak_rss_mb": peak,
            "samples_per_s": batch / s, **extra}


def test_variants_parse(speed):
    assert speed.parse_variants(None, "fp32", False, "auto") == [("fp32", False, "auto")]
    assert speed.parse_variants("fp32,bf16,bf16+compile", "auto", False, "sdpa") == [
        ("fp32", False, "sdpa"), ("bf16", False, "sdpa"), ("bf16", True, "sdpa")]
    assert speed.parse_variants("bf16+fused,fp32+compile+fused", "auto", False, "auto") == [
        ("bf16", False, "fused"), ("fp32", True, "fused")]
    for bad in ("fp16", "bf16+fast", "fp32+fused+fused"):
        with pytest.raises(SystemExit, match="--variants"):
            speed.parse_variants(bad, "auto", False, "auto")


def test_each_variant_is_compared_with_the_public_run_of_its_batch(speed):
    results = [row("bsym", "fp32", "both", 8, 5.0, 1500), row("bsym", "bf16", "both", 8, 2.5, 1200),
               row("public", "public", "both", 8, 30.0, 15000),
               row("bsym", "fp32", "sc", 4, 1.0, 700)]   # no public run of its branch
    rows = speed.compare(results)
    assert [(r["variant"], r["public_batch"], r["speedup"], r["memory_share"])
            for r in rows] == [("fp32", 8, 6.0, 0.1), ("bf16", 8, 12.0, 0.08)]
    assert rows[0]["cpu_speedup"] == 6.0


def test_a_failed_public_batch_falls_back_to_its_best_throughput_per_sample(speed):
    results = [row("bsym", "fp32", "both", 8, 4.0, 1600),
               row("public", "public", "both", 1, 4.0, 3000),     # 0.25 samples/s
               row("public", "public", "both", 4, 20.0, 9000),    # 0.20 samples/s
               row("public", "public", "both", 8, 1.0, 1.0, error="killed by SIGKILL")]
    [ratio] = speed.compare(results)
    assert ratio["public_batch"] == 1 and ratio["public_error_at_batch"] == "killed by SIGKILL"
    assert ratio["speedup"] == pytest.approx(2.0 / 0.25)
    assert ratio["cpu_speedup"] == pytest.approx((8.0 / 1) / (8.0 / 8))
    assert ratio["memory_share"] is None   # memory only at the same batch


def test_failed_runs_of_ours_or_other_presets_are_not_compared(speed):
    results = [{**row("bsym", "fp32", "both", 8, 4.0, 1600), "error": "timeout"},
               {**row("bsym", "fp32", "both", 1, 0.1, 100), "preset": "tiny"},
               row("public", "public", "both", 1, 4.0, 3000)]
    assert speed.compare(results) == []
