"""Training on a folder of your own unlabelled images: written from nested folders of mixed-size files
(unreadable ones skipped and counted, or refused above 1 %), then trained with no labelled test set and
evaluated without labels, end to end on the tests' Ray cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ..conftest import REPO

pytestmark = [pytest.mark.integration]


def _image_folder(root, count: int, unreadable: int):
    """``count`` Fashion-MNIST images as PNG/JPEG files in nested folders, some enlarged (mixed sizes), plus
    ``unreadable`` files that only look like images."""
    from adadim_dist.data.sources import read_source

    source = read_source("fashion_mnist", "train")
    for i in range(count):
        folder = root / f"shoot-{i % 3}" / ("day" if i % 2 else "night")
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(np.asarray(source.images[i]))
        if i % 4 == 0:
            image = image.resize((40, 40))
        image.save(folder / f"img{i:04d}.{'png' if i % 5 else 'jpg'}")
    for i in range(unreadable):
        (root / f"broken{i}.jpg").write_bytes(b"not an image at all")
    (root / "notes.txt").write_text("not an image either, and not counted")
    return root


def test_a_folder_of_unlabelled_images_trains_and_is_evaluated_without_labels(tmp_path, capsys, ray_cluster):
    from adadim_dist.data.__main__ import main as data_main

    folder = _image_folder(tmp_path / "photos", 300, unreadable=2)
    beton = tmp_path / "photos.beton"
    assert data_main(["write", "--source", "folder", "--root", str(folder), "--split", "train",
                      "--out", str(beton), "--max-resolution", "48", "--quiet"]) == 0
    written = capsys.readouterr()
    assert "300 images, no labels, varying size" in written.out + written.err
    assert "2 unreadable file(s) skipped" in written.out + written.err

    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, **ray_cluster["env"]}
    out = subprocess.run(
        [sys.executable, "-m", "adadim_dist.run", "--config", "configs/fmnist_smoke.yaml", "data.source=folder",
         f"data.train_path={beton}", "data.test_path=null", f"run.storage_path={tmp_path / 'runs'}",
         "run.name=own-images", "training.epochs=1", "training.max_steps_per_epoch=3", "training.log_every=1",
         "training.global_batch_size=64", "training.cpus_per_worker=0.5", "eval.baselines=true"],
        # and the default CPU layout (training.layout=auto): one worker holding every core of the node (the
        # cluster's 2 CPUs), whatever num_workers and cpus_per_worker say
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["knn_top1"] is None and summary["probe_top1"] is None and "knn_top1_raw_pixels" not in summary
    assert summary["evaluation"].startswith("label-free")
    assert 1.0 < summary["eval_rankme"] <= 256 and summary["eval_h_r"] > 0 and summary["eval_mi_rz"] >= 0
    assert "evaluation: label-free" in out.stdout and "RankMe" in out.stdout
    # The driver's progress line (not a terminal: plain lines, the last one at the end of training).
    assert "[progress] epoch 1/1 step 3/3 (100%)" in out.stderr, out.stderr[-2000:]
    # A quiet console by default: rank 0's epoch line, no Ray Train chatter; the workers' logs are named.
    assert "[adadim] epoch 1/1 done in" in out.stderr, out.stderr[-2000:]
    assert "TrainingReport(" not in out.stdout + out.stderr and "RayTrainWorker" not in out.stdout + out.stderr
    assert any(Path(summary["worker_logs"]).glob("worker-*.out")), summary["worker_logs"]
    from mlflow.tracking import MlflowClient

    run = MlflowClient(summary["tracking_uri"]).get_run(summary["run_id"])
    assert run.data.tags["machine.layout"] == "1 worker × 2 CPUs"  # what ran
    assert run.data.params["training.num_workers"] == "2" and run.data.params["training.layout"] == \
        "auto"  # what was asked for

    # The offline evaluation of its checkpoint takes the worker's label-free path: the same figures.
    from adadim_dist.evaluate import main as evaluate_main

    capsys.readouterr()
    assert evaluate_main(["--checkpoint", summary["checkpoint"], "--out", str(tmp_path / "report"),
                          "--no-log"]) == 0
    offline = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("rankme", "h_r", "mi_rz"):
        assert offline[f"eval_offline/{key}"] == pytest.approx(summary[f"eval_{key}"], rel=1e-6), key
    assert offline["eval_offline/images"] == 300 and (tmp_path / "report" / "embeddings_map.png").is_file()


def test_folder_errors_are_one_line(tmp_path, capsys):
    from adadim_dist.data.__main__ import main as data_main

    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert data_main(["write", "--source", "folder", "--root", str(tmp_path / "empty"), "--split", "train",
                      "--out", str(tmp_path / "x.beton")]) == 2
    assert "no image files" in capsys.readouterr().err
    folder = _image_folder(tmp_path / "bad", 50, unreadable=3)  # 3 of 53: more than 1 %
    assert data_main(["write", "--source", "folder", "--root", str(folder), "--split", "train",
                      "--out", str(tmp_path / "x.beton")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"adadim_dist.data: error: {folder}: 3 of 53 image files cannot be read")
    assert not (tmp_path / "x.beton").exists()
    assert data_main(["write", "--source", "folder", "--root", str(folder), "--split", "test",
                      "--out", str(tmp_path / "x.beton")]) == 2
    assert "data.test_path=null" in capsys.readouterr().err
