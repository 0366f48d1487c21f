"""The GPU path end to end, in one command (``bash scripts/gpu_check.sh --full``, at most 8 minutes on one GPU).

Three short training jobs through the real entry point, each with FFCV ``ToDevice``, NCCL and bf16 autocast
(the objective in float32): DDP, DeepSpeed ZeRO-2 and ZeRO-3; then ``benchmarks/gpu_step.py``. Prints a table
(pass/fail, images/s, peak GPU memory) and one JSON line per check. Workers = min(2, GPUs).

    python benchmarks/gpu_check.py [--steps 30] [--budget-s 480]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    from _common import emit, images_per_s_windows
except ImportError:
    from benchmarks._common import emit, images_per_s_windows

REPO = Path(__file__).resolve().parents[1]
JOBS = {
    "ddp_bf16": ["--config", "configs/fmnist_smoke.yaml", "training.strategy=ddp"],
    "zero2_bf16": ["--config", "configs/deepspeed/zero2_fmnist.yaml"],
    "zero3_bf16": ["--config", "configs/deepspeed/zero3_fmnist.yaml"],
}


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def run_job(name: str, args: list[str], storage: Path, steps: int, workers: int, timeout: float) -> dict:
    from mlflow.tracking import MlflowClient

    command = [sys.executable, "-m", "adadim_dist.run", *args, "training.use_gpu=true",
               "training.mixed_precision=true", f"training.num_workers={workers}", "training.cpus_per_worker=2",
               "training.global_batch_size=512", "training.epochs=1", f"training.max_steps_per_epoch={steps}",
               "training.log_every=10", "eval.bank_size=5000", "eval.knn_k=[20]", "eval.baselines=false",
               f"run.storage_path={storage}", f"run.name={name}"]
    start = time.perf_counter()
    try:
        out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"check": name, "passed": False, "reason": f"timed out after {timeout:.0f} s"}
    seconds = time.perf_counter() - start
    lines = [line for line in out.stdout.splitlines() if line.startswith('{"run_id"')]
    if out.returncode != 0 or not lines:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"check": name, "passed": False, "reason": f"exit {out.returncode}: {tail}", "seconds": round(seconds)}
    summary = json.loads(lines[-1])
    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    rates = images_per_s_windows(client, summary["run_id"])
    peaks = [m.value for m in client.get_metric_history(summary["run_id"], "train/gpu_peak_gib")]
    return {"check": name, "passed": summary["knn_top1"] is not None, "seconds": round(seconds),
            "images_per_s": round(statistics.median(rates), 1) if rates else None,
            "peak_gib": round(max(peaks), 2) if peaks else None, "knn_top1": summary["knn_top1"]}


def run_gpu_step(timeout: float) -> dict:
    command = [sys.executable, "benchmarks/gpu_step.py", "--steps", "40", "--warmup", "10"]
    try:
        out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    except subprocess.TimeoutExpired:
        return {"check": "gpu_step", "passed": False, "reason": f"timed out after {timeout:.0f} s"}
    if out.returncode != 0:
        return {"check": "gpu_step", "passed": False, "reason": (out.stderr.strip().splitlines() or [""])[-1]}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"check": "gpu_step", "passed": True, "images_per_s": result["adadim_images_per_s"],
            "vicreg_images_per_s": result["vicreg_images_per_s"], "device": result["device"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--budget-s", type=float, default=480)
    args = parser.parse_args()
    gpus = gpu_count()
    if gpus == 0:
        raise SystemExit("gpu_check: no CUDA device visible (torch.cuda.device_count() == 0)")
    deadline = time.perf_counter() + args.budget_s
    results = []
    with tempfile.TemporaryDirectory() as storage:
        for name, job_args in JOBS.items():
            remaining = deadline - time.perf_counter() - 60  # keep a minute for gpu_step
            results.append(run_job(name, job_args, Path(storage), args.steps, min(2, gpus), max(remaining / 2, 30)))
    results.append(run_gpu_step(max(deadline - time.perf_counter(), 30)))
    print(f"{'check':<12} {'result':<6} {'images/s':>9} {'peak GiB':>9}  note")
    for r in results:
        knn = f"kNN {r['knn_top1']:.1f}%" if r.get("knn_top1") is not None else r.get("device", "")
        note = r.get("reason") or knn
        print(f"{r['check']:<12} {'pass' if r['passed'] else 'FAIL':<6} {r.get('images_per_s') or '-':>9} "
              f"{r.get('peak_gib') or '-':>9}  {note}")
    for r in results:
        emit({"benchmark": "gpu_check", "gpus": gpus, **r})
    sys.exit(0 if all(r["passed"] for r in results) else 1)


if __name__ == "__main__":
    main()
