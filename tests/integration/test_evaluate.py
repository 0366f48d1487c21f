"""Offline evaluation of a checkpoint on real .beton files (FFCV loaders, a SQLite MLflow store; no Ray):
what it reports equals the same kNN and linear evaluation computed here from the source images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from adadim_dist.config import load_config
from adadim_dist.models import build_model
from adadim_dist.training.checkpoint import save_state

pytestmark = [pytest.mark.integration]


def _source_images(split: str, limit: int, cfg):
    """The centre view the evaluation loader builds, computed here from the source (32×32 padded RGB)."""
    from adadim_dist.data.sources import read_source
    from adadim_dist.data.writer import to_rgb

    source = read_source("fashion_mnist", split)
    images = np.stack([to_rgb(source.images[i], pad_to=32) for i in range(limit)]).astype(np.float32) / 255
    images = (images - np.array(cfg.data.mean, np.float32)) / np.array(cfg.data.std, np.float32)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(source.labels[:limit])


def test_offline_evaluation_of_a_checkpoint_matches_a_direct_computation(tiny_betons, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from adadim_dist.evaluate import main
    from adadim_dist.evaluation import knn_top1
    from adadim_dist.evaluation import linear_probe_top1

    cfg = load_config(None, [f"data.train_path={tiny_betons['train']}", f"data.test_path={tiny_betons['test']}",
                             f"run.storage_path={tmp_path}", "run.name=offline", "model.small_cnn_width=8",
                             "model.small_cnn_downsample=stride", "model.small_cnn_pool=2", "eval.knn_k=[5, 20]"])
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("offline")).info.run_id
    checkpoint = tmp_path / "offline" / "epoch_0001"
    checkpoint.mkdir(parents=True)
    torch.save(model.state_dict(), checkpoint / "model.pt")
    save_state(checkpoint, {"epoch": 1, "config": cfg.model_dump(mode="json"), "mlflow_run_id": run_id})

    assert main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "report")]) == 0
    printed = capsys.readouterr().out
    result = json.loads(printed.strip().splitlines()[-1])
    assert result["logged_to_mlflow"] and result["eval_offline/bank_images"] == 1024
    assert "eval_offline/knn_top1_k20" in printed and (tmp_path / "report" / "embeddings_map.png").stat().st_size > 5000

    # The features it extracted are the encoder's on the stored pixels (batches and the pipeline's float
    # normalisation move only the last bits), and its figures are exactly those of its features: no slack.
    from adadim_dist.evaluate import features_of

    bank, bank_labels = _source_images("train", 1024, cfg)
    test, test_labels = _source_images("test", 512, cfg)
    with torch.no_grad():
        direct_bank, direct_test = model.encoder(bank), model.encoder(test)
    bank_features, extracted_bank_labels, _ = features_of(model.encoder, cfg, cfg.data.train_path,
                                                          torch.device("cpu"), None, "train")
    test_features, extracted_test_labels, _ = features_of(model.encoder, cfg, cfg.data.test_path,
                                                          torch.device("cpu"), None, "test")
    assert torch.equal(extracted_bank_labels, bank_labels) and torch.equal(extracted_test_labels, test_labels)
    assert torch.allclose(bank_features, direct_bank, atol=1e-4) and torch.allclose(test_features, direct_test,
                                                                                     atol=1e-4)
    for k in (5, 20):
        expected = knn_top1(bank_features, bank_labels, test_features, test_labels, k, 0.07, 10)
        assert result[f"eval_offline/knn_top1_k{k}"] == expected, (k, result, expected)
    expected_linear = linear_probe_top1(bank_features, bank_labels, test_features, test_labels, 10)
    assert result["eval_offline/linear_top1_raw"] == expected_linear
    logged = client.get_run(run_id)
    assert logged.data.metrics["eval_offline/knn_top1_k20"] == result["eval_offline/knn_top1_k20"]
    assert "eval_offline/embeddings_map.png" in [a.path for a in client.list_artifacts(run_id, "eval_offline")]


def test_offline_evaluation_errors_are_one_line(tmp_path, capsys):
    from adadim_dist.evaluate import main

    assert main(["--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"adadim_dist.evaluate: error: --checkpoint: {tmp_path / 'nowhere'} is not a directory")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "state.pt").write_bytes(b"not a checkpoint")
    assert main(["--checkpoint", str(corrupt)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"adadim_dist.evaluate: error: --checkpoint: checkpoint: "
                                              f"{corrupt / 'state.pt'} cannot be read")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["--run-id", "0123abcd", "--tracking-uri", uri]) == 2
    assert capsys.readouterr().err.strip() == (
        f"adadim_dist.evaluate: error: --tracking-uri: {tmp_path / 'mlflow.db'}: no such MLflow store")
    assert not (tmp_path / "mlflow.db").exists()  # nothing created
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=uri).search_experiments()  # an existing, empty store
    capsys.readouterr()
    assert main(["--run-id", "0123abcd", "--tracking-uri", uri]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"adadim_dist.evaluate: error: --run-id: no run 0123abcd in {uri} (RESOURCE_DOES_NOT_EXIST)")


def test_offline_evaluation_of_a_runs_mlflow_encoder_with_the_runs_params(tiny_betons, tmp_path, capsys):
    """--run-id: the encoder a job logged to MLflow (the torch.export program) and the config rebuilt from
    the run's params give the same kNN as evaluating the checkpoint's weights."""
    from adadim_dist.config import flatten
    from adadim_dist.evaluate import main
    from adadim_dist.training.tracking import MLflowSink
    from adadim_dist.evaluation.export import log_encoder, saved_encoder

    cfg = load_config(None, [f"data.train_path={tiny_betons['train']}", f"data.test_path={tiny_betons['test']}",
                             f"run.storage_path={tmp_path}", "run.name=logged", "model.small_cnn_width=8",
                             "model.small_cnn_downsample=stride", "eval.knn_k=[20]"])
    torch.manual_seed(1)
    model = build_model(cfg.model).eval()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sink = MLflowSink(uri, "logged", "logged", tmp_path)
    sink.log_params({k: v for k, v in flatten(cfg).items()})
    log_encoder(sink, saved_encoder(model, 32))
    sink.close()

    assert main(["--run-id", sink.run_id, "--tracking-uri", uri, "--out", str(tmp_path / "by-run")]) == 0
    by_run = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    checkpoint = tmp_path / "logged" / "epoch_0001"
    checkpoint.mkdir(parents=True)
    torch.save(model.state_dict(), checkpoint / "model.pt")
    save_state(checkpoint, {"epoch": 1, "config": cfg.model_dump(mode="json"), "mlflow_run_id": None})
    assert main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "by-checkpoint")]) == 0
    by_checkpoint = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert by_run["logged_to_mlflow"] and not by_checkpoint["logged_to_mlflow"]
    # The logged program computes the checkpoint's features (to float rounding: another kernel path), and each
    # evaluation's figure is exactly the kNN of its own features.
    import argparse

    from adadim_dist.evaluate import features_of, load_encoder_and_config
    from adadim_dist.evaluation import knn_top1

    program, rebuilt, _, _ = load_encoder_and_config(argparse.Namespace(
        checkpoint=None, run_id=sink.run_id, tracking_uri=uri, config=None, overrides=[]))
    features = {}
    for name, encoder in (("run", program), ("checkpoint", model.encoder)):
        bank, bank_labels, _ = features_of(encoder, rebuilt, cfg.data.train_path, torch.device("cpu"), None, "train")
        test, test_labels, _ = features_of(encoder, rebuilt, cfg.data.test_path, torch.device("cpu"), None, "test")
        features[name] = (bank, test)
        expected = knn_top1(bank, bank_labels, test, test_labels, 20, 0.07, 10)
        assert {"run": by_run, "checkpoint": by_checkpoint}[name]["eval_offline/knn_top1_k20"] == expected, name
    for run_part, checkpoint_part in zip(features["run"], features["checkpoint"]):
        assert torch.allclose(run_part, checkpoint_part, atol=1e-4)
