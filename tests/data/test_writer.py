"""The .beton writer, its CLI, and check_beton: content round-trips, atomic writes, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from adadim_dist.config import DataConfig
from adadim_dist.data.__main__ import main
from adadim_dist.data.beton import check_beton
from adadim_dist.data.sources import DataError, read_source
from adadim_dist.data.writer import ensure_beton, prepare_datasets, to_rgb, write_beton


def read_stored_image(path, index: int) -> np.ndarray:
    """Raw pixels of sample ``index`` straight from the file (no FFCV Loader), for round-trip checks."""
    from ffcv.reader import Reader

    reader = Reader(str(path))
    record = reader.metadata[index]["f0"]
    assert record["mode"] == 1, "expected raw storage"
    count = int(record["height"]) * int(record["width"]) * 3
    data = np.fromfile(path, dtype=np.uint8, count=count, offset=int(record["data_ptr"]))
    return data.reshape(int(record["height"]), int(record["width"]), 3)


def stored_labels(path) -> np.ndarray:
    from ffcv.reader import Reader

    return np.asarray(Reader(str(path)).metadata["f1"])


def test_to_rgb_pads_grey_to_32_and_repeats_channels():
    grey = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    rgb = to_rgb(grey, pad_to=32)
    assert rgb.shape == (32, 32, 3)
    assert np.array_equal(rgb[2:30, 2:30, 1], grey) and rgb[:2].max() == 0 and rgb[:, 30:].max() == 0
    assert np.array_equal(rgb[..., 0], rgb[..., 2])
    with pytest.raises(DataError, match="32"):
        to_rgb(np.zeros((40, 40), np.uint8), pad_to=32)


def test_written_pixels_and_labels_round_trip(fmnist_beton, fmnist_train):
    """Catches a shifted pad, swapped channels or a label/image misalignment in the writer's worker split."""
    labels = stored_labels(fmnist_beton)
    assert np.array_equal(labels, fmnist_train.labels)
    for index in (0, 255, 256, 511):  # both writer processes' halves
        assert np.array_equal(read_stored_image(fmnist_beton, index), to_rgb(fmnist_train.images[index], 32))


def test_check_beton_reports_contents(fmnist_beton, index_beton):
    info = check_beton(fmnist_beton)
    assert (info.num_samples, info.min_size, info.max_size, info.num_classes) == (512, (32, 32), (32, 32), 10)
    assert info.fields == {"image": "RGBImageField", "label": "IntField"}
    assert check_beton(index_beton).num_classes == 512


def test_cli_write_prints_summary_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "m.beton"
    args = ["write", "--source", "mnist", "--split", "test", "--out", str(out), "--limit", "64", "--quiet"]
    assert main(args) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wrote {out}: 64 images, 10 classes, 28×28×3") and line.endswith(" s")
    before = out.read_bytes()

    assert main(args + ["--as-rgb32"]) == 2
    err = capsys.readouterr().err
    assert err == f"adadim_dist.data: error: {out}: already exists (pass --overwrite to replace it)\n"
    assert out.read_bytes() == before

    assert main(args + ["--as-rgb32", "--overwrite"]) == 0
    assert check_beton(out).max_size == (32, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.beton"]  # no temporary file left


def test_cli_writes_a_long_tailed_training_set(tmp_path, capsys):
    out = tmp_path / "lt.beton"
    argv = ["write", "--source", "mnist", "--split", "test", "--out", str(out), "--imbalance-ratio", "10", "--quiet"]
    assert main(argv) == 0
    labels = read_source("mnist", "test").labels
    expected = [min(int((labels == c).sum()), int(np.bincount(labels).max() * 10 ** (-c / 9))) for c in range(10)]
    assert f"wrote {out}: {sum(expected)} images, 10 classes" in capsys.readouterr().out
    assert check_beton(out).num_samples == sum(expected)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--source", "imagenet", "--split", "train"], "unknown source 'imagenet'"),
        (["--source", "mnist", "--split", "val"], "unknown split 'val'"),
        (["--source", "cifar10", "--split", "train", "--root", "{tmp}"], "no cifar-10-batches-py/ directory"),
        (["--source", "mnist", "--split", "test", "--limit", "0"], "--limit must be at least 1"),
        (["--source", "mnist", "--split", "test", "--imbalance-ratio", "0.5"], "--imbalance-ratio must be at least 1"),
    ],
)
def test_cli_user_errors_are_one_line_exit_2_and_leave_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "out" / "x.beton"
    argv = ["write", "--out", str(out), "--quiet"] + [a.replace("{tmp}", str(tmp_path)) for a in extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("adadim_dist.data: error: ") and message in err and err.count("\n") == 1
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


@pytest.mark.reliability
def test_failing_writer_process_raises_and_leaves_no_file(tmp_path, capsys):
    """A corrupt image kills a writer process; FFCV 1.0.2 alone would wait forever for its samples."""
    for i in range(3):
        folder = tmp_path / "src" / "train" / f"class{i}"
        folder.mkdir(parents=True)
        Image.new("RGB", (20, 20), (i * 80, 0, 0)).save(folder / "ok.png")
    (tmp_path / "src" / "train" / "class1" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out" / "folder.beton"
    argv = ["write", "--source", "imagefolder", "--split", "train", "--root", str(tmp_path / "src"),
            "--out", str(out), "--quiet", "--num-workers", "1"]  # fmt: skip
    assert main(argv) == 2
    assert "adadim_dist.data: error: a writer process failed" in capsys.readouterr().err.splitlines()[-1]
    assert list(out.parent.iterdir()) == []


def test_imagefolder_of_varying_sizes_is_written(tmp_path):
    for i, size in enumerate([(20, 30), (50, 40)]):
        folder = tmp_path / "train" / f"c{i}"
        folder.mkdir(parents=True)
        Image.new("RGB", size, (10, 20, 30)).save(folder / "a.png")
    summary = write_beton(read_source("imagefolder", "train", tmp_path), tmp_path / "f.beton", progress=False)
    assert summary.image_shape is None and summary.num_classes == 2
    info = check_beton(tmp_path / "f.beton")
    assert (info.min_size, info.max_size) == ((30, 20), (40, 50))


@pytest.mark.reliability
@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: data[: len(data) // 2], "truncated"),
        (lambda data: data[:-8], "truncated allocation table"),
        (lambda data: b"", "shorter than"),
        (lambda data: bytes(40) + data[40:], "format version 0"),
    ],
)
def test_check_beton_rejects_damaged_files(tmp_path, fmnist_beton, damage, message):
    path = tmp_path / "damaged.beton"
    path.write_bytes(damage(fmnist_beton.read_bytes()))
    with pytest.raises(DataError, match=message) as caught:
        check_beton(path)
    assert str(path) in str(caught.value)


def test_check_beton_missing_file_and_missing_labels(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such .beton file"):
        check_beton(tmp_path / "absent.beton")
    np.savez(tmp_path / "train.npz", images=np.zeros((3, 8, 8), np.uint8))
    write_beton(read_source("npz", "train", tmp_path), tmp_path / "u.beton", progress=False)
    with pytest.raises(DataError, match="no 'label' field"):
        check_beton(tmp_path / "u.beton")
    assert check_beton(tmp_path / "u.beton", need_labels=False).num_classes is None


def test_ensure_beton_writes_builtin_sources_and_names_the_command_for_others(tmp_path, fmnist_beton):
    cfg = DataConfig(source="mnist", train_path=fmnist_beton, test_path=tmp_path / "mnist_test.beton")
    train, test = prepare_datasets(cfg)
    assert train.path == fmnist_beton  # existing file: checked, not rewritten
    assert test.num_samples == 10000 and test.max_size == (32, 32)  # written as RGB 32×32
    with pytest.raises(FileNotFoundError, match="python -m adadim_dist.data write --source cifar10 --split test"):
        ensure_beton("cifar10", "test", tmp_path / "c.beton")


def test_prepare_writes_a_long_tailed_training_file_from_the_config(tmp_path):
    cfg = DataConfig(source="mnist", train_path=tmp_path / "lt.beton", test_path=tmp_path / "t.beton",
                     train_imbalance_ratio=100)
    train, test = prepare_datasets(cfg)
    expected = len(read_source("mnist", "train").long_tailed(100))
    assert train.num_samples == expected < 60000 // 3 and test.num_samples == 10000  # the test set stays whole
    # An existing file is used only if it was written with this ratio: another ratio, or a balanced file, is
    # refused (the ratio is logged as a param, so silently training on another file would mislabel the run).
    other = DataConfig(source="mnist", train_path=tmp_path / "lt.beton", test_path=tmp_path / "t.beton",
                       train_imbalance_ratio=10)
    with pytest.raises(DataError, match=r"^data\.train_path: .*lt\.beton exists but is not mnist's train split "
                                        r"long-tailed with ratio 10"):
        prepare_datasets(other)
    balanced = DataConfig(source="mnist", train_path=tmp_path / "t.beton", test_path=tmp_path / "t.beton",
                          train_imbalance_ratio=100)
    with pytest.raises(DataError, match=r"^data\.train_path: "):
        prepare_datasets(balanced)


def test_module_entry_point_exits_2_with_one_line(tmp_path):
    """``python -m adadim_dist.data`` wires main()'s return code to the process exit code."""
    import subprocess
    import sys

    out = tmp_path / "x.beton"
    result = subprocess.run(
        [sys.executable, "-m", "adadim_dist.data", "write", "--source", "svhn", "--split", "train", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == ["adadim_dist.data: error: unknown source 'svhn' (choose from "
                                                  "fashion_mnist, mnist, cifar10, cifar100, stl10, imagefolder, folder, npz)"]
    assert not out.exists()


def test_validation_split_is_carved_out_of_the_training_split_and_never_the_test_set(tmp_path, fmnist_beton):
    """data.validation_size = K: train_path = the training images but the last K, test_path = the last K (same
    pixels and labels as the source's rows); an existing file that is not that split is refused, naming the key."""
    cfg = DataConfig(source="mnist", train_path=tmp_path / "fit.beton", test_path=tmp_path / "val.beton",
                     validation_size=500)
    train, val = prepare_datasets(cfg)
    source = read_source("mnist", "train")
    assert (train.num_samples, val.num_samples) == (len(source) - 500, 500)
    assert np.array_equal(stored_labels(tmp_path / "val.beton"), source.labels[-500:])
    assert np.array_equal(read_stored_image(tmp_path / "val.beton", 0)[2:30, 2:30, 0], source.images[-500])
    assert prepare_datasets(cfg)[1].num_samples == 500  # the second time: checked, not rewritten
    record = tmp_path / "val.beton.split.json"
    older = {k: v for k, v in json.loads(record.read_text()).items() if k != "imbalance_ratio"}
    record.write_text(json.dumps(older))  # as written before long-tailed subsets had a ratio in the record
    assert prepare_datasets(cfg)[1].num_samples == 500
    real_test = DataConfig(source="mnist", train_path=tmp_path / "fit.beton", test_path=fmnist_beton,
                           validation_size=500)
    with pytest.raises(DataError, match=r"^data\.test_path: .* is not the rows \[-500:\]"):
        prepare_datasets(real_test)
    other_size = DataConfig(source="mnist", train_path=tmp_path / "fit.beton", test_path=tmp_path / "val.beton",
                            validation_size=400)
    with pytest.raises(DataError, match=r"^data\.train_path: "):
        prepare_datasets(other_size)
