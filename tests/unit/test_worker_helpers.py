"""Small pieces of the worker loop that need no Ray: the non-finite diagnosis and the baseline hand-over."""


import pytest
import torch

from adadim_dist.objectives import AdaDim
from adadim_dist.training.state_checks import non_finite_terms


def test_naming_non_finite_terms_leaves_alpha_state_alone():
    torch.manual_seed(0)
    objective = AdaDim(alpha_mode="adaptive", alpha_interval=1, alpha_ema=0.9)
    r, z = torch.randn(32, 16), torch.randn(32, 8)
    objective(r, r + 0.1 * torch.randn_like(r), z, z + 0.1 * torch.randn_like(z))
    before = objective.state_dict()
    bad = z.clone()
    bad[0, 0] = float("nan")
    bad_terms = non_finite_terms(objective, r, r, torch.randn(32, 8), bad)
    assert objective.state_dict() == before
    assert "loss/total" in bad_terms and "adadim/alpha" not in bad_terms



@pytest.mark.parametrize("bad_value, finite", [(None, True), (float("nan"), False), (float("inf"), False),
                                               (float("-inf"), False), (1e30, True)])
def test_gradients_finite_names_each_non_finite_entry_and_not_an_overflowing_norm(bad_value, finite):
    from adadim_dist.distributed.engine import gradients_finite

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    assert gradients_finite(model)  # no gradient yet
    model(torch.randn(5, 8)).sum().backward()
    if bad_value is not None:  # one entry; 1e30 is finite but its square overflows the float32 norm
        model[2].weight.grad[1, 3] = bad_value
    assert gradients_finite(model) is finite

def test_grey_pixels_keep_their_knn_on_one_channel_and_colour_pixels_are_left_whole():
    from adadim_dist.evaluation import knn_top1
    from adadim_dist.evaluation.baselines import first_channel, is_grey

    torch.manual_seed(0)
    labels = torch.arange(200) % 4
    grey = (torch.randn(200, 1, 8, 8) + labels.view(-1, 1, 1, 1) * 0.3).expand(-1, 3, -1, -1).flatten(1)
    bank, queries = grey[:150], grey[150:]
    assert is_grey(bank) and first_channel(bank).shape == (150, 64)
    assert torch.equal(first_channel(bank), grey[:150, :64])
    assert knn_top1(first_channel(bank), labels[:150], first_channel(queries), labels[150:], k=5) == \
        knn_top1(bank, labels[:150], queries, labels[150:], k=5)
    colour = grey.clone()
    colour[7, 64] += 1.0  # one pixel of one image's second channel differs
    assert not is_grey(colour)


def test_a_skipped_step_leaves_batchnorm_statistics_and_the_checkpoint_check_sees_them():
    """The forward pass of a diverged batch moves BatchNorm's running statistics before any gradient is
    seen; StepBuffers puts them back on a skip, and the check before a checkpoint looks at buffers too."""
    import torch

    from adadim_dist.distributed.engine import StepBuffers
    from adadim_dist.training.state_checks import state_is_finite

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).train()
    model(torch.randn(8, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    buffers = StepBuffers(model)
    buffers.remember()
    model(torch.full((8, 4), float("nan")))
    assert not state_is_finite(model.state_dict())  # only the running statistics are NaN here
    assert state_is_finite({k: v for k, v in model.state_dict().items() if "running" not in k})
    buffers.restore()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert state_is_finite(model.state_dict())


def test_step_buffers_off_keep_no_copy_and_refuse_to_restore():
    """Under training.non_finite=stop no step is skipped: no copy of the buffers per step, and a restore that
    would silently leave a diverged batch's statistics in place raises instead."""
    from adadim_dist.distributed.engine import StepBuffers

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).train()
    buffers = StepBuffers(model, enabled=False)
    buffers.remember()
    assert buffers.saved is None
    with pytest.raises(RuntimeError, match="not kept"):
        buffers.restore()


def test_one_process_objective_has_no_collectives_and_the_same_loss_and_gradients():
    """A one-worker job's objective takes the plain path (no packing of tensors for a gather that gathers
    nothing), and that path gives the collective-wired objective's loss and gradients."""
    from adadim_dist.config import load_config
    from adadim_dist.distributed import all_gather_with_grad, all_reduce_with_grad, broadcast_from_rank0
    from adadim_dist.objectives import adadim_from_config
    from adadim_dist.objectives.adadim import _identity
    from adadim_dist.training.build import build_objective

    cfg = load_config("configs/fmnist_smoke.yaml", [])
    plain = build_objective(cfg, 100, 0)
    wired = adadim_from_config(cfg.objective, 100, gather=all_gather_with_grad, all_reduce=all_reduce_with_grad,
                               sync=broadcast_from_rank0, rank=0)
    assert plain.gather is _identity and plain.all_reduce is _identity
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(32, 64, generator=generator) for _ in range(4)]
    results = []
    for objective in (plain, wired):
        leaves = [t.clone().requires_grad_() for t in inputs]
        loss, _ = objective(*leaves, with_stats=False)
        loss.backward()
        results.append((loss.detach(), [t.grad for t in leaves]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-6, atol=1e-7)
    for plain_grad, wired_grad in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(plain_grad, wired_grad, rtol=1e-5, atol=1e-7)


def test_baselines_are_cached_by_what_they_depend_on_only(tmp_path, monkeypatch):
    """The random-encoder and raw-pixel kNN do not depend on training: the second job with the same data,
    bank, k and architecture reads them back; a different bank or encoder computes them again."""
    from adadim_dist.config import load_config
    from adadim_dist.evaluation import baselines as worker

    for name in ("train.beton", "test.beton"):
        (tmp_path / name).write_bytes(b"x" * 10)
    base = [f"data.train_path={tmp_path / 'train.beton'}", f"data.test_path={tmp_path / 'test.beton'}",
            f"run.storage_path={tmp_path / 'runs'}", "eval.bank_size=100", "eval.knn_k=[20]"]
    cfg = load_config(None, base)
    key = worker.baseline_cache_key(cfg)
    assert worker.baseline_cache_key(load_config(None, base + ["optim.lr=0.1", "objective.gamma=3",
                                                               "data.view_a.crop_scale=[0.5, 1.0]"])) == key
    for change in ("eval.bank_size=200", "eval.knn_k=[5]", "model.small_cnn_width=8", "training.seed=1"):
        assert worker.baseline_cache_key(load_config(None, base + [change])) != key, change

    calls = []

    def compute(eval_loaders, cfg, device, shared=False):
        calls.append(cfg.eval.bank_size)
        return {"baseline/knn_random_top1": 70.0 + len(calls), "baseline/knn_pixels_top1": 80.0}

    monkeypatch.setattr(worker, "baseline_knn", compute)
    first = worker.cached_baseline_knn(None, cfg, "cpu")
    assert worker.cached_baseline_knn(None, cfg, "cpu") == first and calls == [100]
    worker.cached_baseline_knn(None, load_config(None, base + ["eval.bank_size=200"]), "cpu")
    assert calls == [100, 200]
    (tmp_path / "train.beton").write_bytes(b"y" * 11)  # the data changed: its size and time differ
    assert worker.cached_baseline_knn(None, cfg, "cpu") != first and calls == [100, 200, 100]


def test_evaluation_reports_collapsed_dimensions_of_the_held_out_embeddings():
    """evaluate() measures the spectra of the test embeddings R and Z next to kNN and the probe; a projector
    whose last layer is rank 3 leaves all but 3 dimensions of Z collapsed."""
    import torch

    from adadim_dist.config import load_config
    from adadim_dist.models import build_model
    from adadim_dist.evaluation.online import evaluate_labelled as evaluate

    cfg = load_config(None, ["model.small_cnn_width=4", "model.projector_dims=[32, 16]", "eval.knn_k=[5]",
                             "eval.per_class=true"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    with torch.no_grad():
        last = model.projector[-1]
        last.weight.copy_(torch.randn(16, 3) @ torch.randn(3, 32))
        last.bias.zero_()
    batches = [(torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))) for _ in range(3)]
    spectra: dict = {}
    results = evaluate(model, (batches[:2], batches[2:]), cfg, torch.device("cpu"), spectra)
    assert results["spectrum/dim_r"] == 32 and results["spectrum/dim_z"] == 16
    assert results["spectrum/collapsed_z"] == 13 and results["spectrum/collapsed_r"] < 32
    assert len(spectra["z"]) == 16 and spectra["z"][0] >= spectra["z"][-1]
    assert {"knn/top1_k5", "probe/top1"} <= set(results)
    # eval.per_class: each class's kNN top-1, which the test set's class counts weigh into the total.
    test_labels = batches[2][1]
    per_class = {int(k.rsplit("_c", 1)[1]): v for k, v in results.items() if k.startswith("knn_class/top1_k5_c")}
    assert set(per_class) == set(test_labels.tolist())
    assert sum(v * (test_labels == c).sum().item() for c, v in per_class.items()) / 64 == \
        pytest.approx(results["knn/top1_k5"])


def test_batch_spectrum_metrics_have_their_own_names():
    """The global training batch's spectra sit beside the test embeddings', under ``*_batch`` names."""
    from adadim_dist.evaluation.spectra import spectrum_metrics

    torch.manual_seed(0)
    r, z = torch.randn(64, 32), torch.randn(64, 4) @ torch.randn(4, 16)  # Z spans 4 of its 16 dimensions
    spectra: dict = {"z": [1.0]}
    results = spectrum_metrics(r, z, spectra, suffix="_batch")
    assert results == {"spectrum/batch_collapsed_r": 0.0, "spectrum/batch_collapsed_z": 12.0}
    assert sorted(spectra) == ["r_batch", "z", "z_batch"] and len(spectra["z_batch"]) == 16


def test_evaluation_parts_are_contiguous_cover_everything_and_differ_by_at_most_one():
    from adadim_dist.evaluation.online import part_range

    for count, parts in ((10, 3), (7, 7), (20000, 2), (5, 1)):
        ranges = [part_range(count, part, parts) for part in range(parts)]
        assert ranges[0][0] == 0 and ranges[-1][1] == count
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert max(e - s for s, e in ranges) - min(e - s for s, e in ranges) <= 1


def test_rank0_state_on_one_process_is_the_state_itself():
    from adadim_dist.evaluation.online import rank0_state

    state = {"w": torch.randn(3, 2), "running_mean": torch.randn(2), "num_batches_tracked": torch.tensor(4)}
    assert rank0_state(state, torch.device("cpu")) is state


def test_a_process_group_of_one_is_released_with_its_threads():
    """A one-worker job's gloo group (Ray Train starts one) is destroyed, and with it the threads that wake every
    10 ms; without a group, releasing does nothing."""
    import os

    import torch.distributed as dist

    from adadim_dist.distributed import release_lone_process_group
    from tests.distributed._harness import free_port

    def threads() -> set[str]:
        return {open(f"/proc/self/task/{tid}/comm").read().strip() for tid in os.listdir("/proc/self/task")}

    release_lone_process_group()  # no group: nothing to do
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    assert dist.is_initialized() and "gloo_tcp_loop" in threads()
    release_lone_process_group()
    assert not dist.is_initialized() and "gloo_tcp_loop" not in threads()
