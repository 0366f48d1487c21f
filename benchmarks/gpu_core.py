"""The GPU check's torch-only core: what matters on a GPU, on a machine with nothing but a CUDA torch.

Needs torch and the project's pure modules (models, objectives, sync BatchNorm): no Ray, FFCV, MLflow or
DeepSpeed. DeepSpeed's ZeRO-2 and ZeRO-3 steps run only when ``import deepspeed`` works (its wheels can travel
with the tree: README, "GPU check"). Checks, each a table row and a JSON line:

- ``step_<arch>_<px>``: a two-view training step of ResNet-18 / ResNet-50 at the production shapes (batch 256
  per GPU, 32 px and 224 px), channels-last, bf16 autocast for the network and the AdaDim objective in fp32:
  images/s, the objective's share of the step (its forward and backward timed alone), peak memory. For
  ResNet-18 at 32 px, the projected epoch time of P5 (two views of 60,000 images).
- ``objective_bf16_vs_fp32``: the objective's loss, α and I(R;Z) from a bf16-autocast forward against fp32.
- ``syncbn_one_process``: SyncBatchNorm (NCCL on CUDA; the project's GlobalBatchNorm on gloo otherwise) in a
  one-process group: forward, backward, and equal to plain BatchNorm there.
- ``zero2_step`` / ``zero3_step``: one DeepSpeed step each in a one-process group, if DeepSpeed imports.

    PYTHONPATH=. python benchmarks/gpu_core.py [--device cuda] [--budget-s 420]
    bash scripts/gpu_check.sh --device cpu          # tiny shapes on CPU (the test suite runs this)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.nn as nn

# Production shapes on a GPU; tiny ones on CPU so the script itself is tested where no GPU is.
SHAPES = {"cuda": {"batch": 256, "steps": ((("resnet18", 32), 20), (("resnet18", 224), 8), (("resnet50", 32), 12),
                                           (("resnet50", 224), 6)), "projector": (2048, 2048, 2048)},
          "cpu": {"batch": 4, "steps": ((("resnet18", 32), 2), (("resnet50", 64), 1)), "projector": (64, 64)}}
P5_IMAGES = 60_000


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls, synchronised around each call."""
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_check(arch: str, pixels: int, batch: int, repeats: int, projector: tuple, device: torch.device) -> dict:
    from adadim_dist.models import SSLModel
    from adadim_dist.objectives import AdaDim

    torch.manual_seed(0)
    model = SSLModel(arch, cifar_stem=pixels <= 64, projector_dims=projector, num_classes=10)
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    views = [torch.randn(batch, 3, pixels, pixels, device=device).to(memory_format=torch.channels_last)
             for _ in range(2)]
    objective = AdaDim(alpha_mode="adaptive", mi_sign="maximize")
    use_bf16 = device.type == "cuda"

    def forward():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            (r_a, z_a, _), (r_b, z_b, _) = model(views[0]), model(views[1])
        return r_a, r_b, z_a, z_b

    def train_step():
        loss, _ = objective(*forward(), with_stats=False)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        objective.step()

    embeddings = [t.detach().float().requires_grad_(True) for t in forward()]

    def objective_alone():
        loss, _ = objective(*embeddings, with_stats=False)
        loss.backward()

    train_step()  # warm-up: cuDNN autotuning, allocator growth
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_s = timed(train_step, device, repeats)
    objective_s = timed(objective_alone, device, repeats)
    result = {"check": f"step_{arch}_{pixels}", "passed": True, "batch": batch,
              "images_per_s": round(batch / step_s, 1), "step_ms": round(step_s * 1e3, 2),
              "objective_share": round(objective_s / step_s, 4)}
    if device.type == "cuda":
        result["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if (arch, pixels) == ("resnet18", 32):
        result["p5_epoch_s"] = round(P5_IMAGES / result["images_per_s"], 1)
    return result


def precision_check(batch: int, projector: tuple, device: torch.device) -> dict:
    """The objective from a bf16-autocast forward against an fp32 one (on CPU: bf16 autocast too)."""
    from adadim_dist.models import SSLModel
    from adadim_dist.objectives import AdaDim

    torch.manual_seed(0)
    model = SSLModel("resnet18", cifar_stem=True, projector_dims=projector, num_classes=10).to(device).eval()
    views = [torch.randn(max(batch, 16), 3, 32, 32, device=device) for _ in range(2)]
    values = {}
    for name, enabled in (("fp32", False), ("bf16", True)):
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled):
            (r_a, z_a, _), (r_b, z_b, _) = model(views[0]), model(views[1])
        loss, stats = AdaDim(alpha_mode="adaptive")(r_a, r_b, z_a, z_b)
        values[name] = {"loss": float(loss), "alpha": float(stats["adadim/alpha"]), "mi": float(stats["info/mi_rz"])}
    relative = {key: abs(values["bf16"][key] - values["fp32"][key]) / max(abs(values["fp32"][key]), 1e-12)
                for key in values["fp32"]}
    return {"check": "objective_bf16_vs_fp32", "passed": all(v < 0.05 for v in relative.values()),
            "relative_difference": {k: round(v, 5) for k, v in relative.items()}, **values}


def one_process_group(device: torch.device) -> None:
    if not dist.is_initialized():
        with tempfile.NamedTemporaryFile(delete=False) as handle:
            store = handle.name
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{store}",
                                rank=0, world_size=1)


def syncbn_check(device: torch.device) -> dict:
    from adadim_dist.distributed.sync_batchnorm import convert_sync_batchnorm

    one_process_group(device)
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).to(device)
    synced = convert_sync_batchnorm(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).to(device),
                                    device.type)
    synced.load_state_dict(plain.state_dict())
    x = torch.randn(8, 3, 16, 16, device=device)
    outputs = [m(x) for m in (plain, synced)]
    for out in outputs:
        out.square().mean().backward()
    same = torch.allclose(outputs[0], outputs[1], atol=1e-5) and torch.allclose(
        plain[0].weight.grad, synced[0].weight.grad, atol=1e-5)
    kind = type(synced[1]).__name__
    return {"check": "syncbn_one_process", "passed": bool(same), "layer": kind,
            "backend": dist.get_backend()}


def zero_check(stage: int, device: torch.device) -> dict:
    try:
        import deepspeed  # noqa: F401
    except Exception as err:  # noqa: BLE001 - not carried along: reported, not failed
        return {"check": f"zero{stage}_step", "passed": True,
                "skipped": f"deepspeed not importable ({type(err).__name__})"}
    from adadim_dist.distributed.engine import build_engine
    from adadim_dist.models import SSLModel
    from adadim_dist.objectives import AdaDim
    from adadim_dist.training.optim import build_optimizer, build_scheduler

    one_process_group(device)
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    torch.manual_seed(0)
    model = SSLModel("resnet18", cifar_stem=True, projector_dims=(64, 64), num_classes=10)
    main_params, probe_params = model.parameter_groups()
    optim_cfg = SimpleNamespace(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, probe_lr=0.1)
    optimizer = build_optimizer(optim_cfg, 8, main_params, probe_params)
    scheduler = build_scheduler(optimizer, total_steps=4, warmup_steps=0, min_ratio=0.0)
    engine = build_engine("deepspeed", model, optimizer, scheduler, device,
                          ds_cfg=SimpleNamespace(zero_stage=stage, offload_optimizer=False, bf16=False),
                          batch_size_per_worker=8, world_size=1, use_amp=device.type == "cuda")
    views = [torch.randn(8, 3, 32, 32, device=device) for _ in range(2)]
    before = {k: v.clone() for k, v in engine.full_state_dict().items()}
    started = time.perf_counter()
    (r_a, z_a, _), (r_b, z_b, _) = engine(views[0]), engine(views[1])
    loss, _ = AdaDim()(r_a, r_b, z_a, z_b, with_stats=False)
    engine.backward(loss)
    engine.step()
    after = engine.full_state_dict()
    moved = any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())
    return {"check": f"zero{stage}_step", "passed": bool(moved and torch.isfinite(loss).item()),
            "step_ms": round((time.perf_counter() - started) * 1e3, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--budget-s", type=float, default=420, help="checks not started by then are skipped")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_core: error: --device cuda, but no CUDA device is visible (use --device cpu for the tiny check)",
              file=sys.stderr)
        return 2
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    shapes = SHAPES[args.device]
    deadline = time.perf_counter() + args.budget_s
    checks = [lambda a=arch, p=px, r=reps: step_check(a, p, shapes["batch"], r, shapes["projector"], device)
              for (arch, px), reps in shapes["steps"]]
    checks += [lambda: precision_check(shapes["batch"], shapes["projector"], device), lambda: syncbn_check(device),
               lambda: zero_check(2, device), lambda: zero_check(3, device)]
    results = []
    for check in checks:
        if time.perf_counter() > deadline:
            results.append({"check": "remaining", "passed": False, "reason": "over --budget-s"})
            break
        try:
            results.append(check())
        except Exception as err:  # noqa: BLE001 - one failed check must not hide the others
            results.append({"check": getattr(check, "__name__", "check"), "passed": False,
                            "reason": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"})
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"GPU core check on {name} (torch {torch.__version__})")
    print(f"{'check':<24} {'result':<7} {'images/s':>9} {'obj. share':>10} {'peak GiB':>9}  note")
    for r in results:
        note = r.get("reason") or r.get("skipped") or (f"P5 epoch {r['p5_epoch_s']} s" if "p5_epoch_s" in r else "")
        if "relative_difference" in r:
            note = "rel. diff " + ", ".join(f"{k} {v:.2e}" for k, v in r["relative_difference"].items())
        print(f"{r['check']:<24} {'pass' if r['passed'] else 'FAIL':<7} {r.get('images_per_s', '-'):>9} "
              f"{r.get('objective_share', '-'):>10} {r.get('peak_gib', '-'):>9}  {note}")
    for r in results:
        print(json.dumps({"benchmark": "gpu_core", "device": name, "torch": torch.__version__, **r}))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
