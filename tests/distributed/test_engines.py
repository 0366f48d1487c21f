"""The training engines on 2 real gloo processes: LARS per original tensor, non-finite gradients under ZeRO,
float32 objective under bf16 autocast, synchronized BatchNorm (issue 11)."""

import pytest
import torch
from torch import nn

from adadim_dist.objectives import AdaDim
from adadim_dist.objectives.information import information_terms

from ._harness import run_distributed
from .engine_workers import (
    NON_FINITE_CASES,
    TinyBNNet,
    bn_batch,
    bn_loss_and_grads,
    lars_update_worker,
    mixed_precision_worker,
    non_finite_worker,
    sync_batchnorm_worker,
)

pytestmark = pytest.mark.distributed

LR, MOMENTUM, WEIGHT_DECAY, ETA = 0.5, 0.9, 0.1, 0.02


def reference_lars(param: torch.Tensor, grad: torch.Tensor, is_probe: bool) -> torch.Tensor:
    """One LARS step from zero momentum, written out on the unflattened tensor (You et al. 2017): weight
    decay and trust ratio for weight matrices and kernels, plain SGD for biases/BN parameters and the probe."""
    lr = 0.1 if is_probe else LR
    if param.ndim > 1 and not is_probe:
        grad = grad + WEIGHT_DECAY * param
        grad = grad * (ETA * param.norm() / grad.norm())
    return param - lr * grad


def test_lars_applies_trust_ratio_per_original_tensor_under_ddp_and_zero0(tmp_path):
    """Under every strategy LARS is allowed with (DDP, DeepSpeed ZeRO-0), one update equals LARS computed on the
    whole, unflattened tensors; for weight tensors it differs from a plain SGD step (LARS is really on).
    ZeRO 1–3 are refused at config time (tests/unit/test_config.py)."""
    run_distributed(lars_update_worker, 2, (str(tmp_path),))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for strategy in ("ddp", "zero0"):
        result = ranks[0][strategy]
        checked_matrices = 0
        for name, before, grad, after in zip(result["names"], result["before"], result["grads"], result["after"]):
            expected = reference_lars(before, grad, is_probe=name.startswith("probe."))
            assert torch.allclose(after, expected, rtol=1e-5, atol=1e-7), f"{strategy} {name}"
            if before.ndim > 1 and not name.startswith("probe."):
                assert not torch.allclose(after, before - LR * grad, rtol=1e-3), f"{strategy} {name}: plain SGD"
                checked_matrices += 1
        assert checked_matrices >= 5
        for mine, theirs in zip(result["after"], ranks[1][strategy]["after"]):
            assert torch.equal(mine, theirs)  # replicas stay identical


def test_non_finite_gradients_caught_under_every_zero_stage_and_skip_leaves_nothing_stale(tmp_path):
    """A NaN gradient on rank 1 only (its loss finite) is seen by both ranks under ZeRO 1, 2 and 3 (1 and 2 also
    with optimizer offload), where p.grad is already cleared. A skipped step leaves nothing stale (gradient
    partitions, BatchNorm statistics its forward moved, offload's overflow flag): skip + two clean steps end
    bit-for-bit where the clean steps alone end, and the learning-rate schedule did not advance."""
    run_distributed(non_finite_worker, 2, (str(tmp_path),))
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert sorted(result) == sorted(str(case) for case in NON_FINITE_CASES)
        for stage, end in result.items():
            assert end["applied"] == [False, True, True], stage
            assert end["lr_after_skip"] == end["lr_clean"], stage
            for key, value in end["clean"].items():  # weights and BatchNorm running statistics
                assert torch.equal(end["skipped_then_clean"][key], value), (stage, key)


def test_objective_sees_float32_under_bf16_autocast(tmp_path):
    """One step under CPU bf16 autocast, DDP and ZeRO-2: the outputs the objective receives are float32, and
    α and I(R;Z) computed from them match the float32 step's (the encoder's bf16 rounding is all that
    differs). Computing the estimator itself in bf16 moves I(R;Z) far more: checked as a counter-example.
    The objective's own upcast of bf16 inputs is tested in tests/unit/test_adadim.py."""
    run_distributed(mixed_precision_worker, 2, (str(tmp_path),))
    for engine in ("ddp", "zero2"):
        outputs = {}
        for precision in ("fp32", "bf16"):
            results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True)[f"{engine}_{precision}"]
                       for r in range(2)]
            shards = [result["outputs"] for result in results]
            assert all(t.dtype == torch.float32 for shard in shards for t in shard), (engine, precision)
            # bf16 really ran inside (every convolution and linear layer), and not at all in the fp32 step.
            want = "torch.bfloat16" if precision == "bf16" else "torch.float32"
            assert all(result["inner_dtypes"] == [want] for result in results), (engine, precision, results[0])
            # Gradients are all-reduced in fp32 under both strategies (DeepSpeed's default would mark every
            # Linear and Conv weight for bf16 reduction; DDP never reduces in bf16).
            assert all(result["reduced_in_bf16"] == [] for result in results), (engine, precision)
            outputs[precision] = [torch.cat([shards[0][i], shards[1][i]]) for i in range(4)]  # global batch
        assert not torch.equal(outputs["bf16"][2], outputs["fp32"][2])  # the encoder's rounding shows
        stats = {p: AdaDim()(*outputs[p])[1] for p in outputs}
        assert stats["bf16"]["adadim/alpha"] == pytest.approx(stats["fp32"]["adadim/alpha"], rel=0.01)
        mi_fp32, mi_bf16 = float(stats["fp32"]["info/mi_rz"]), float(stats["bf16"]["info/mi_rz"])
        assert mi_bf16 == pytest.approx(mi_fp32, rel=0.005), (engine, mi_fp32, mi_bf16)
        # The counter-example: the same estimator evaluated in bf16 is off by several percent (a small
        # difference of large entropies), so the tolerance above would catch an objective run in bf16.
        r_a, r_b, z_a, z_b = [t.bfloat16() for t in outputs["bf16"]]
        mi_in_bf16 = 0.5 * (information_terms(r_a, z_a)["mi"] + information_terms(r_b, z_b)["mi"]).item()
        assert abs(mi_in_bf16 - mi_fp32) > 0.02 * mi_fp32, (mi_in_bf16, mi_fp32)


def test_sync_batchnorm_gives_the_gradients_of_one_process_on_the_whole_batch(tmp_path):
    """A model with BatchNorm (encoder and projector) under DDP on 2 processes: with synchronized BatchNorm the
    loss, the averaged gradients and the running statistics equal one process on the whole batch (float64);
    with per-worker BatchNorm they do not."""
    run_distributed(sync_batchnorm_worker, 2, (str(tmp_path),))
    model = TinyBNNet()
    loss, grads, buffers = bn_loss_and_grads(model, model, *bn_batch(0, 1))
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        synced, local = result["sync"], result["local"]
        assert synced["loss"].item() == pytest.approx(loss.item(), rel=1e-10)
        assert (synced["grads"] - grads).norm() / grads.norm() < 1e-9
        assert torch.allclose(synced["buffers"], buffers, rtol=1e-10, atol=1e-12)
        assert (local["grads"] - grads).norm() / grads.norm() > 1e-3


def test_sync_batchnorm_keeps_the_state_dict_of_batchnorm():
    """Checkpoints and the exported encoder load into a plain model: the names and shapes do not change."""
    from adadim_dist.distributed.sync_batchnorm import GlobalBatchNorm, convert_sync_batchnorm

    plain = TinyBNNet()
    converted = convert_sync_batchnorm(TinyBNNet())
    assert sum(isinstance(m, GlobalBatchNorm) for m in converted.modules()) == 2
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, GlobalBatchNorm)
                   for m in converted.modules())
    shapes = {k: v.shape for k, v in plain.state_dict().items()}
    assert shapes == {k: v.shape for k, v in converted.state_dict().items()}
    converted.eval()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    plain.eval()
    assert torch.equal(plain(x)[1], converted(x)[1])  # no process group: plain BatchNorm
