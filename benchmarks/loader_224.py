"""Images/s per core of the two-view SSL loader at 224 px on a JPEG .beton of real photos, side by side with
FFCV's own one-view RandomResizedCrop + flip pipeline on the same file and threads; ``--ops``: what each
augmentation costs per image at 224 px, optionally against the operations of another git revision.

Photos (fetched with the ordinary package clients into ``--cache``, nothing installed; already installed copies
are used instead): the sample images of Debian's ``opencv-doc`` (``apt-get download``, unpacked with
``dpkg-deb``), the images bundled in scikit-image's wheel (``skimage/data``, no pooch downloads) and foolbox's
ImageNet samples (``foolbox/data/imagenet_*.jpg``; ``pip download --no-deps``). Kept: colour photographs, i.e.
RGB files of one frame whose shorter side is at least 224 px, less the renders, logos and drawings listed in
``EXCLUDED``. They are copied unchanged (original size and encoding) to ``<cache>/photos/<source>/``.

The .beton: the project's ``folder`` source over that folder (every file checked), its file list repeated to at
least ``--images`` images, written by the project's writer (``write_beton``: the longer side resized to
``--max-resolution``, default 256 as ``python -m adadim_dist.data write`` does for image folders, JPEG quality
90; FFCV's ResNet-50 files kept up to 500 px, which costs more per decode: try ``--max-resolution 500``). Repetition
repeats the list, not the files: each copy is decoded afresh by the loader and cropped differently.

Loaders, both over that file with ``--threads`` FFCV threads, batch ``--batch``, random order, drop_last:

- ssl: ``build_ssl_loader`` with the data section of ``configs/imagenet100_resnet50.yaml`` at 224 px: two
  views per image, each seeded random-resized-crop → flip → colour jitter (p 0.8, with hue) → grayscale (p 0.2)
  → blur (p 1.0 / 0.1) → solarize (p 0 / 0.2) → normalised float32 N×3×224×224;
- ffcv: ``RandomResizedCropRGBImageDecoder((224, 224))`` → ``RandomHorizontalFlip()`` → ``ToTensor()`` →
  ``ToTorchImage()``: FFCV's ImageNet training pipeline up to its GPU transfer (uint8; it normalises on the GPU).

Each loader runs one untimed epoch first (FFCV's compilation, page cache), then ``--epochs`` timed epochs,
alternating ssl / ffcv epoch by epoch. Reported per loader: images/s (source images; the ssl loader makes two
views of each), images/s per thread, and process CPU ms per image (all threads; less disturbed by other load
than wall time). ``--gpu-images-per-s R`` adds the threads per GPU the ssl loader needs to feed a training step
that consumes R source images/s.

``--ops``: each augmentation with probability 1 on a batch of 224 px centre crops of the photos, serial build,
CPU time of the calling thread (median of ``--repeats``), in ms per image; the expected augmentation ms per view
of the ImageNet-100 recipe (each step's time × its probability, plus normalisation); and ``crop_decode``, the
seeded crop decoder alone (JPEG decode + crop + resize, one view) in a one-thread Loader over the .beton, process
CPU ms per image. ``--ops-ref REF`` also times ``adadim_dist/data/ops.py`` as of git revision REF on the same
batch, alternating with the current one, and reports how many output values differ.

    python benchmarks/loader_224.py [--threads N] [--batch 64] [--epochs 2] [--images 5000] [--max-resolution 256]
    python benchmarks/loader_224.py --ops [--ops-ref HEAD] [--repeats 9]
    python benchmarks/loader_224.py --quick          # a smoke run: 512 images, one timed epoch (not a result)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

try:
    from _common import emit
except ImportError:  # run as a module
    from benchmarks._common import emit

SKIMAGE_VERSION = "0.26.0"
FOOLBOX_VERSION = "3.3.4"
OPENCV_DOC_DATA = "usr/share/doc/opencv-doc/examples/data"
MIN_SIDE = 224
#: Colour files that pass the size rule but are not photographs.
EXCLUDED = {
    "opencv": {"Blender_Suzanne1.jpg", "Blender_Suzanne2.jpg", "LinuxLogo.jpg", "WindowsLogo.jpg", "blox.jpg",
               "ml.png", "pic1.png", "pic2.png", "pic3.png", "pic4.png", "pic5.png", "pic6.png"},
    "skimage": {"phantom.png", "color.png", "chessboard_RGB.png"},
}  # fmt: skip
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".ppm")
CONFIG = REPO / "configs" / "imagenet100_resnet50.yaml"


# ------------------------------------------------------------------------------------------------ photos
def _run(command: list[str], cwd: Path) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


def _opencv_doc_files(downloads: Path) -> dict[str, bytes]:
    """The files directly in opencv-doc's examples/data: the installed package's, else the .deb's."""
    installed = Path("/") / OPENCV_DOC_DATA
    if installed.is_dir():
        return {p.name: p.read_bytes() for p in sorted(installed.iterdir()) if p.is_file()}
    debs = sorted(downloads.glob("opencv-doc_*.deb"))
    if not debs:
        _run(["apt-get", "download", "opencv-doc"], downloads)
        debs = sorted(downloads.glob("opencv-doc_*.deb"))
    files = {}
    unpack = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(debs[-1])], stdout=subprocess.PIPE)
    with tarfile.open(fileobj=unpack.stdout, mode="r|") as archive:
        for member in archive:
            parent, _, name = member.name.lstrip("./").rpartition("/")
            if member.isfile() and parent == OPENCV_DOC_DATA:
                files[name] = archive.extractfile(member).read()
    unpack.wait()
    return files


def _wheel_files(downloads: Path, package: str, version: str, folder: str) -> dict[str, bytes]:
    """The files directly in ``folder`` of the package's wheel (``pip download --no-deps``)."""
    pattern = f"{package.replace('-', '_')}-{version}-*.whl"
    if not list(downloads.glob(pattern)):
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-c",
              str(REPO / "constraints.txt"), f"{package}=={version}", "-d", str(downloads)], downloads)  # fmt: skip
    with zipfile.ZipFile(sorted(downloads.glob(pattern))[-1]) as wheel:
        return {name.rpartition("/")[2]: wheel.read(name) for name in wheel.namelist()
                if name.rpartition("/")[0] == folder}  # fmt: skip


def _is_colour_photo(data: bytes) -> tuple[bool, tuple[int, int]]:
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            frames = getattr(image, "n_frames", 1)
            return image.mode == "RGB" and frames == 1 and min(image.size) >= MIN_SIDE, image.size
    except Exception:  # noqa: BLE001 - not an image PIL reads
        return False, (0, 0)


def collect_photos(cache: Path) -> Path:
    """``<cache>/photos/{opencv,skimage,foolbox}/…``: the selected photos, with a manifest; reused when present."""
    folder = cache / "photos"
    manifest = folder / "manifest.json"
    if manifest.is_file():
        return folder
    downloads = cache / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    sources = {
        "opencv": _opencv_doc_files(downloads),
        "skimage": _wheel_files(downloads, "scikit-image", SKIMAGE_VERSION, "skimage/data"),
        "foolbox": {name: data for name, data in
                    _wheel_files(downloads, "foolbox", FOOLBOX_VERSION, "foolbox/data").items()
                    if name.startswith("imagenet_")},
    }  # fmt: skip
    staging = Path(tempfile.mkdtemp(prefix=".photos-", dir=cache))
    kept: dict[str, list] = {}
    for source, files in sources.items():
        (staging / source).mkdir()
        kept[source] = []
        for name, data in sorted(files.items()):
            if not name.lower().endswith(IMAGE_SUFFIXES) or name in EXCLUDED.get(source, ()):
                continue
            keep, size = _is_colour_photo(data)
            if keep:
                (staging / source / name).write_bytes(data)
                kept[source].append([name, *size])
    versions = {"opencv-doc": "installed" if (Path("/") / OPENCV_DOC_DATA).is_dir()
                else sorted(downloads.glob("opencv-doc_*.deb"))[-1].name,
                "scikit-image": SKIMAGE_VERSION, "foolbox": FOOLBOX_VERSION}  # fmt: skip
    (staging / "manifest.json").write_text(json.dumps({"versions": versions, "photos": kept}, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    return folder


def photo_counts(folder: Path) -> dict[str, int]:
    photos = json.loads((folder / "manifest.json").read_text())["photos"]
    return {source: len(names) for source, names in photos.items()}


def ensure_photos_beton(folder: Path, out: Path, images: int, max_resolution: int, workers: int) -> dict:
    """Write (or reuse) the repeated-photos .beton; returns its description."""
    from adadim_dist.data.sources import ImageFiles, ImageSet, read_folder
    from adadim_dist.data.writer import write_beton

    photos = read_folder(folder, "train")
    repeats = math.ceil(images / len(photos))
    description = {"photos": len(photos), "repeats": repeats, "images": len(photos) * repeats,
                   "max_resolution": max_resolution, "storage": "JPEG quality 90"}  # fmt: skip
    record = out.with_name(out.name + ".json")
    if out.is_file() and record.is_file() and json.loads(record.read_text()) == description:
        return description
    repeated = ImageSet(f"photos x{repeats}", ImageFiles(list(photos.images.paths) * repeats), None)
    summary = write_beton(repeated, out, overwrite=True, num_workers=workers, max_resolution=max_resolution,
                          progress=True)  # fmt: skip
    print(summary.line(), file=sys.stderr)
    record.write_text(json.dumps(description))
    return description


# ------------------------------------------------------------------------------------------------ loaders
def in100_data_config(beton: Path, threads: int):
    """The data section of the ImageNet-100 config, reading ``beton`` with ``threads`` loader threads."""
    from adadim_dist.config import load_config

    data = load_config(CONFIG).data
    return data.model_copy(update={"train_path": beton, "test_path": None, "cache_dir": None,
                                   "num_loader_workers": threads, "subset": None})  # fmt: skip


def ffcv_rrc_flip_loader(beton: Path, batch: int, threads: int, size: int):
    """FFCV's own ImageNet training pipeline (one view) up to the GPU transfer."""
    from adadim_dist.data import _ffcv  # noqa: F401  (before any ffcv import)
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, ToTensor, ToTorchImage

    pipeline = [RandomResizedCropRGBImageDecoder((size, size)), RandomHorizontalFlip(), ToTensor(), ToTorchImage()]
    return Loader(str(beton), batch_size=batch, num_workers=threads, order=OrderOption.RANDOM, seed=0,
                  drop_last=True, pipelines={"image": pipeline})  # fmt: skip


def timed_epoch(loader) -> tuple[int, float, float]:
    """(images, wall s, process CPU s) of one full pass; touches every batch."""
    started, cpu_started, count = time.perf_counter(), time.process_time(), 0
    for batch in loader:  # ssl: (view a, view b, labels); ffcv: (images,)
        count += batch[0].shape[0]
    return count, time.perf_counter() - started, time.process_time() - cpu_started


def loader_benchmark(args, beton: Path, description: dict) -> None:
    from adadim_dist.data.loader import build_ssl_loader

    data_cfg = in100_data_config(beton, args.threads)
    loaders = {
        "ssl": build_ssl_loader(data_cfg, args.batch, rank=0, world_size=1, seed=0, distributed=False),
        "ffcv": ffcv_rrc_flip_loader(beton, args.batch, args.threads, data_cfg.image_size),
    }
    first = {name: timed_epoch(loader)[1] for name, loader in loaders.items()}
    totals = {name: [0, 0.0, 0.0] for name in loaders}
    for _ in range(args.epochs):
        for name, loader in loaders.items():
            for slot, value in enumerate(timed_epoch(loader)):
                totals[name][slot] += value
    result = {
        "benchmark": "loader_224",
        "data": (f"{description['images']} images: {description['photos']} photos "
                 f"({', '.join(f'{n} {s}' for s, n in photo_counts(args.cache / 'photos').items())}) "
                 f"x{description['repeats']}, longer side <= {description['max_resolution']}, "
                 f"{description['storage']}"),
        "image_size": data_cfg.image_size,
        "batch_size": args.batch,
        "threads": args.threads,
        "cpus_available": len(os.sched_getaffinity(0)),
        "timed_epochs": args.epochs,
        "ssl": "two views, configs/imagenet100_resnet50.yaml augmentations, normalised float32",
        "ffcv": "one view, RandomResizedCropRGBImageDecoder + RandomHorizontalFlip, uint8",
    }
    for name, (count, wall, cpu) in totals.items():
        rate = count / wall
        result[f"{name}_images_per_s"] = round(rate, 1)
        result[f"{name}_images_per_s_per_thread"] = round(rate / args.threads, 1)
        result[f"{name}_cpu_ms_per_image"] = round(1000 * cpu / count, 3)
        result[f"{name}_first_epoch_s"] = round(first[name], 1)
    result["ssl_views_per_s"] = round(2 * result["ssl_images_per_s"], 1)
    result["ratio_ssl_to_ffcv_images"] = round(result["ssl_images_per_s"] / result["ffcv_images_per_s"], 3)
    if args.gpu_images_per_s:
        result["gpu_images_per_s"] = args.gpu_images_per_s
        result["threads_per_gpu_wall"] = round(args.gpu_images_per_s / result["ssl_images_per_s_per_thread"], 1)
        result["threads_per_gpu_cpu_time"] = round(args.gpu_images_per_s * result["ssl_cpu_ms_per_image"] / 1000, 1)
    if args.quick:
        result["note"] = "--quick smoke run, not a result"
    emit(result)


# ---------------------------------------------------------------------------------------------------- ops
def ops_from_revision(ref: str):
    """``adadim_dist/data/ops.py`` as of git revision ``ref``, imported as a module beside the current one."""
    source = subprocess.run(["git", "show", f"{ref}:adadim_dist/data/ops.py"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    folder = Path(tempfile.mkdtemp(prefix="ops_ref_"))
    path = folder / "ops_ref.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("adadim_dist.data._ops_ref", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def op_runner(op, images: np.ndarray, indices: np.ndarray):
    """A callable running ``op`` on the batch as FFCV does (declared buffers, generated code), and its output."""
    import torch
    from ffcv.pipeline.state import State

    state = State(jit_mode=True, device=torch.device("cpu"), shape=images.shape[1:], dtype=np.dtype("uint8"))
    _, query = op.declare_state_and_memory(state)
    queries = query if isinstance(query, tuple) else (query,)
    buffers = tuple(np.zeros((len(images),) + q.shape, dtype=q.dtype) for q in queries)
    code = op.generate_code()
    arguments = (images, buffers if isinstance(query, tuple) else buffers[0])
    if getattr(code, "with_indices", False):
        arguments += (indices,)
    return lambda: code(*arguments), buffers[0]


def photo_batch(folder: Path, size: int, count: int) -> np.ndarray:
    """``count`` centre squares of the photos, resized to ``size`` (OpenCV area interpolation), cycling."""
    import cv2

    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    crops = []
    for path in paths:
        image = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        height, width = image.shape[:2]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        crops.append(cv2.resize(image[top : top + side, left : left + side], (size, size),
                                interpolation=cv2.INTER_AREA))  # fmt: skip
    return np.stack([crops[i % len(crops)] for i in range(count)])


def ops_set(module, view, mean, std) -> dict:
    """Every augmentation with probability 1, parameters of ``view`` (the ImageNet-100 recipe)."""
    return {
        "flip": module.SeededHorizontalFlip(1.0, seed=1),
        "color_jitter": module.ColorJitter(view.brightness, view.contrast, view.saturation, view.hue, 1.0, seed=2),
        "jitter_no_hue": module.ColorJitter(view.brightness, view.contrast, view.saturation, 0.0, 1.0, seed=2),
        "hue_only": module.ColorJitter(0.0, 0.0, 0.0, view.hue, 1.0, seed=2),
        "grayscale": module.RandomGrayscale(1.0, seed=3),
        "blur": module.GaussianBlur(view.blur_sigma, 1.0, seed=4),
        "solarize": module.RandomSolarize(view.solarize_threshold, 1.0, seed=5),
        "normalize": module.NormalizeToTensor(mean, std),
    }


def expected_view_ms(per_op: dict[str, float], view) -> float:
    """Expected augmentation ms per view: each step's cost times its probability (crop decode not included)."""
    return (view.flip_prob * per_op["flip"] + view.jitter_prob * per_op["color_jitter"]
            + view.grayscale_prob * per_op["grayscale"] + view.blur_prob * per_op["blur"]
            + view.solarize_prob * per_op["solarize"] + per_op["normalize"])  # fmt: skip


def crop_decode_ms(modules: dict, beton: Path, view, size: int, count: int, epochs: int) -> dict[str, float]:
    """CPU ms per image of each module's seeded random-resized-crop decoder alone (JPEG decode, crop, area
    resize), in a one-thread FFCV Loader over the first ``count`` images of ``beton``; epochs alternate."""
    from adadim_dist.data import _ffcv  # noqa: F401  (before any ffcv import)
    from ffcv.loader import Loader, OrderOption

    loaders = {}
    for version, module in modules.items():
        decoder = module.SeededRandomResizedCropDecoder((size, size), scale=view.crop_scale, ratio=view.crop_ratio,
                                                        seed=1)  # fmt: skip
        loaders[version] = Loader(str(beton), batch_size=64, num_workers=1, order=OrderOption.RANDOM, seed=0,
                                  drop_last=True, indices=np.arange(count), pipelines={"image": [decoder]})
        timed_epoch(loaders[version])  # compiles the decoder
    totals = {version: [0, 0.0] for version in loaders}
    for _ in range(epochs):
        for version, loader in loaders.items():
            images, _, cpu = timed_epoch(loader)
            totals[version][0] += images
            totals[version][1] += cpu
    return {version: 1000 * cpu / images for version, (images, cpu) in totals.items()}


def ops_benchmark(args, beton: Path, description: dict) -> None:
    from adadim_dist.data import ops
    from ffcv.pipeline.compiler import Compiler

    Compiler.set_enabled(True)
    Compiler.set_num_threads(1)  # the serial build: ms per image per core
    data_cfg = in100_data_config(Path("unused.beton"), 1)
    images = photo_batch(args.cache / "photos", data_cfg.image_size, args.batch)
    indices = np.arange(len(images), dtype=np.uint64) * 13 + 5
    modules = {"current": ops}
    if args.ops_ref:
        modules = {"ref": ops_from_revision(args.ops_ref), "current": ops}
    runners = {(version, name): op_runner(op, images, indices)
               for version, module in modules.items()
               for name, op in ops_set(module, data_cfg.view_a, data_cfg.mean, data_cfg.std).items()}  # fmt: skip
    for run, _ in runners.values():  # compile (or load from numba's cache) and warm up
        run()
        run()
    seconds: dict[tuple, list[float]] = {key: [] for key in runners}
    for _ in range(args.repeats):  # variants take turns, so drifts in the machine's speed hit all alike
        for key, (run, _) in runners.items():
            started = time.thread_time()
            run()
            seconds[key].append(time.thread_time() - started)
    per_image = {key: 1000 * statistics.median(values) / len(images) for key, values in seconds.items()}
    result = {
        "benchmark": "loader_224_ops",
        "images": f"{len(images)} centre crops of the photos at {data_cfg.image_size} px",
        "clock": "CPU time of the calling thread, serial build, median of repeats",
        "repeats": args.repeats,
    }
    count = min(1024, description["images"])
    decode = crop_decode_ms(modules, beton, data_cfg.view_a, data_cfg.image_size, count=count, epochs=3)
    result["crop_decode"] = (f"CPU ms per image of the crop decoder alone (one view), one-thread FFCV Loader over "
                             f"{count} images of {beton.name}")  # fmt: skip
    for version in modules:
        ms = {name: value for (of, name), value in per_image.items() if of == version}
        ms["crop_decode"] = per_image[(version, "crop_decode")] = decode[version]
        label = "" if version == "current" else "ref_"
        result[f"{label}ms_per_image"] = {name: round(value, 4) for name, value in ms.items()}
        result[f"{label}view_a_ms"] = round(expected_view_ms(ms, data_cfg.view_a), 3)
        result[f"{label}view_b_ms"] = round(expected_view_ms(ms, data_cfg.view_b), 3)
    if args.ops_ref:
        result["ref"] = args.ops_ref
        names = [name for version, name in runners if version == "current"] + ["crop_decode"]
        result["speedup"] = {name: round(per_image[("ref", name)] / per_image[("current", name)], 2) for name in names}
        differences = {}
        for name in names[:-1]:
            new, old = runners[("current", name)][1], runners[("ref", name)][1]
            delta = np.abs(new.astype(np.float64) - old.astype(np.float64))
            differences[name] = {"max": float(delta.max()), "values_differing": int(np.count_nonzero(delta)),
                                 "of": int(delta.size)}  # fmt: skip
        result["output_vs_ref"] = differences
    emit(result)


# ---------------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=REPO / "data" / "bench" / "photos224",
                        help="downloads, the photos folder and the .beton files")  # fmt: skip
    parser.add_argument("--images", type=int, default=5000, help="repeat the photos to at least this many")
    parser.add_argument("--max-resolution", type=int, default=256, help="longer side of the stored images")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="FFCV loader threads")
    parser.add_argument("--batch", type=int, default=64, help="per GPU: 1024 / 16 in the ImageNet-100 config")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per loader")
    parser.add_argument("--gpu-images-per-s", type=float, help="two-view training step rate, source images/s")
    parser.add_argument("--ops", action="store_true", help="time each augmentation instead of the loaders")
    parser.add_argument("--ops-ref", help="with --ops: also time ops.py of this git revision (e.g. HEAD)")
    parser.add_argument("--repeats", type=int, default=9, help="with --ops: timed calls per operation")
    parser.add_argument("--quick", action="store_true", help="smoke run: 512 images, batch 32, one timed epoch")
    args = parser.parse_args()
    if args.quick:
        args.images, args.batch, args.epochs, args.repeats = 512, 32, 1, 3

    args.cache.mkdir(parents=True, exist_ok=True)
    folder = collect_photos(args.cache)
    beton = args.cache / f"photos_{args.images}_{args.max_resolution}.beton"
    description = ensure_photos_beton(folder, beton, args.images, args.max_resolution, args.threads)
    if args.ops:
        ops_benchmark(args, beton, description)
    else:
        loader_benchmark(args, beton, description)


if __name__ == "__main__":
    main()
