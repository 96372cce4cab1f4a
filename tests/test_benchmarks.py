"""Every benchmark runs in its tiny `--smoke` mode and prints its figures, so the benchmarks never rot.

Only the output's form is checked: speed and memory targets are measured by the full runs, never asserted here.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# Each benchmark runs as a script, in a subprocess.
pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
NUMBER = r"\d+\.\d+"


def run_smoke(script: str, *arguments: str) -> str:
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--smoke", *arguments],
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def test_purifier_overhead_prints_time_and_flop_fractions_for_batch_1_and_32():
    output = run_smoke("purifier_overhead.py")
    for batch_size in (1, 32):
        assert re.search(
            rf"batch {batch_size}: g {NUMBER} ms, {NUMBER} GFLOPs; f {NUMBER} ms, {NUMBER} GFLOPs "
            r"\(medians over 2 repetitions\)",
            output,
        ), output
        assert re.search(
            rf"batch {batch_size}: g/f time {NUMBER}%, g/f FLOPs {NUMBER}%; (meets|MISSES) the 3% target", output
        ), output


def test_attack_throughput_prints_images_per_second_and_the_pgd_to_passes_ratio():
    output = run_smoke("attack_throughput.py")
    for name in ("embedded", r"paper architecture \(tiny random, --smoke\)"):
        assert re.search(
            rf"{name}, batch 2: PGD-20 {NUMBER} s = {NUMBER} images/s; 21 forward\+backward passes {NUMBER} s", output
        ), output
        ratio = rf"{name}, batch 2: PGD-20 / 21 passes = {NUMBER}; (meets|MISSES) the 1.10 target"
        assert re.search(ratio, output), output


def test_training_cost_prints_every_variant_and_the_verdicts():
    output = run_smoke("training_cost.py")
    rows = re.findall(rf"^(AT|CRoPD \w+) \(([^)]*)\) +{NUMBER} +{NUMBER} +{NUMBER} +{NUMBER}$", output, re.MULTILINE)
    assert len(rows) == 10, output
    assert ("CRoPD foundation", "sdpa, checkpointed f, bf16 autocast") in rows, output
    assert ("CRoPD foundation", "eager") in rows, output
    assert re.search(r"CRoPD foundation: fastest .* \(target 0.6\); leanest .* \(target 0.5\); (meets|MISSES)", output)
    assert re.search(r"CRoPD purifier: fastest .* \(target 0.05\); (meets|MISSES) the target", output), output


def test_scaling_prints_every_row_the_verdicts_and_writes_the_plot(tmp_path):
    plot = tmp_path / "scaling.png"
    output = run_smoke("scaling.py", "--plot", str(plot))
    # Memory deltas are differences of two RSS readings and can come out slightly negative ("-0.0").
    signed = rf"-?{NUMBER}"
    rows = re.findall(
        rf"^(stage-1|PGD-20) +(\d+) +{NUMBER} +{NUMBER} +{NUMBER} +{NUMBER} +{signed} +", output, re.MULTILINE
    )
    # Stage 1 starts at 2 images: its standardized contrastive loss needs 2 samples.
    assert rows == [
        ("stage-1", "2"),
        ("stage-1", "8"),
        ("stage-1", "16"),
        ("PGD-20", "1"),
        ("PGD-20", "8"),
        ("PGD-20", "16"),
    ], output
    assert "stage-1: smallest batch 2, not 1" in output, output
    for kind in ("stage-1", "PGD-20"):
        assert re.search(rf"^{kind}: time (linear|SUPERLINEAR): ", output, re.MULTILINE), output
        assert re.search(rf"^{kind}: memory (linear, no jump|JUMP at [^:]+) .*MiB/image", output, re.MULTILINE), output
    assert plot.read_bytes().startswith(b"\x89PNG"), output
