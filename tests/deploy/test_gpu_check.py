"""The GPU check's torch-only core, run here on tiny CPU shapes so the script is known to work before a GPU is
at hand (on a GPU: ``bash scripts/gpu_check.sh``; README, "GPU check")."""

import json
import subprocess

import pytest

from ..conftest import REPO

pytestmark = pytest.mark.integration


def test_the_gpu_core_check_runs_every_check_on_tiny_cpu_shapes():
    out = subprocess.run(["bash", "scripts/gpu_check.sh", "--device", "cpu"], cwd=REPO, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = {r["check"]: r for r in (json.loads(line) for line in out.stdout.splitlines()
                                       if line.startswith('{"benchmark": "gpu_core"'))}
    assert set(results) == {"step_resnet18_32", "step_resnet50_64", "objective_bf16_vs_fp32", "syncbn_one_process",
                            "zero2_step", "zero3_step"}
    assert all(r["passed"] for r in results.values())
    assert results["step_resnet18_32"]["images_per_s"] > 0 and 0 < results["step_resnet18_32"]["objective_share"] < 1
    step = results["step_resnet18_32"]
    assert step["p5_epoch_s"] == pytest.approx(60000 / step["images_per_s"], rel=0.01)
    assert results["syncbn_one_process"]["layer"] == "GlobalBatchNorm"  # SyncBatchNorm on CUDA
    assert "skipped" not in results["zero2_step"] and "skipped" not in results["zero3_step"]  # DeepSpeed is here
    assert "GPU core check on cpu" in out.stdout


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is present")
def test_asking_for_cuda_without_a_gpu_is_one_line():
    out = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.strip().startswith("gpu_core: error: --device cuda, but no CUDA device")
