"""``python -m adadim_dist.data {write,check,preview}``: write, validate and look at ``.beton`` files.

    write    --source SOURCE --split train|test --out PATH.beton [--root DIR] [--as-rgb32] [--overwrite]
             [--limit N] [--imbalance-ratio R] [--num-workers K] [--max-resolution PX] [--quiet]
    check    PATH.beton [--no-labels]
    preview  PATH.beton --out views.png [--num 8] [--seed 0] [--config CONFIG.yaml] [data.key=value ...]

User errors print one line, ``adadim_dist.data: error: ...``, on stderr and exit with code 2; nothing is
left behind by a failed write.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import ConfigError
from .sources import SOURCES, SPLITS, DataError

PROG = "adadim_dist.data"
#: Exception types that mean "the user asked for something impossible", reported in one line.
USER_ERRORS = (DataError, ConfigError, FileNotFoundError, FileExistsError, IsADirectoryError,
               NotADirectoryError, PermissionError)  # fmt: skip
MAX_PREVIEW_IMAGES = 64  # preview: one column per image


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Write, check and preview FFCV .beton datasets.")
    commands = parser.add_subparsers(dest="command", required=True)

    write = commands.add_parser("write", help="write a dataset split to a .beton file")
    # Source and split are checked by read_source, not argparse, so a wrong one is a one-line error too.
    write.add_argument("--source", required=True, help=f"dataset reader: {', '.join(SOURCES)}")
    write.add_argument("--split", required=True, help=" or ".join(SPLITS))
    write.add_argument("--out", required=True, type=Path, help="the .beton file to write")
    write.add_argument("--root", type=Path, help="dataset directory (or .npz file); built-in sources have defaults")
    write.add_argument("--as-rgb32", action="store_true", help="pad small images to 32×32 (grey is always RGB)")
    write.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    write.add_argument("--limit", type=int, help="write only the first N images")
    write.add_argument("--imbalance-ratio", type=float,
                       help="long-tailed subset: class c keeps n_max * R^(-c/(C-1)) of its images (R >= 1)")
    write.add_argument("--num-workers", type=int, default=2, help="writer processes (default 2)")
    write.add_argument("--max-resolution", type=int, help="imagefolder, folder: longest side after resizing (default 256)")
    write.add_argument("--quiet", action="store_true", help="no progress bar")

    check = commands.add_parser("check", help="validate a .beton file and print what it holds")
    check.add_argument("path", type=Path)
    check.add_argument("--no-labels", action="store_true", help="accept a file without a label field")

    preview = commands.add_parser("preview", help="save a PNG of both views of the first images")
    preview.add_argument("path", type=Path)
    preview.add_argument("--out", required=True, type=Path, help="PNG file to write")
    preview.add_argument("--num", type=int, default=8,
                         help=f"number of images (default 8, at most {MAX_PREVIEW_IMAGES})")
    preview.add_argument("--seed", type=int, default=0)
    preview.add_argument("--config", type=Path, help="take the view recipes from this config's data section")
    preview.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. data.view_b.blur_prob=1")
    return parser


def _write(args: argparse.Namespace) -> int:
    from .sources import read_source
    from .writer import record_origin, write_beton

    if args.out.exists() and not args.overwrite:  # before reading a possibly large source
        raise FileExistsError(f"{args.out}: already exists (pass --overwrite to replace it)")
    if args.limit is not None and args.limit < 1:
        raise DataError(f"--limit must be at least 1, got {args.limit}")
    if args.imbalance_ratio is not None and not args.imbalance_ratio >= 1:
        raise DataError(f"--imbalance-ratio must be at least 1, got {args.imbalance_ratio}")
    image_set = read_source(args.source, args.split, args.root)
    if args.imbalance_ratio is not None:
        image_set = image_set.long_tailed(args.imbalance_ratio)
    summary = write_beton(image_set, args.out, as_rgb32=args.as_rgb32, limit=args.limit, overwrite=args.overwrite,
                          num_workers=args.num_workers, max_resolution=args.max_resolution,
                          progress=not args.quiet)  # fmt: skip
    if args.imbalance_ratio is not None and args.limit is None:  # what data.train_imbalance_ratio checks for
        record_origin(args.out, {"source": args.source, "split": args.split, "rows": None,
                                 "imbalance_ratio": args.imbalance_ratio})
    print(summary.line())
    return 0


def _check(args: argparse.Namespace) -> int:
    from .beton import check_beton

    info = check_beton(args.path, need_labels=not args.no_labels)
    sizes = f"{info.min_size[0]}×{info.min_size[1]}"
    if info.max_size != info.min_size:
        sizes += f" to {info.max_size[0]}×{info.max_size[1]}"
    classes = "no labels" if info.num_classes is None else f"{info.num_classes} classes"
    print(f"{info.path}: ok, {info.num_samples} images, {sizes}, {classes}, fields {', '.join(info.fields)}")
    return 0


def _preview(args: argparse.Namespace) -> int:
    from ..config import load_config
    from .preview import save_preview

    if not 1 <= args.num <= MAX_PREVIEW_IMAGES:  # one column per image: a figure, not a dataset dump
        raise DataError(f"--num must be between 1 and {MAX_PREVIEW_IMAGES}, got {args.num}")
    data_cfg = load_config(args.config, args.overrides).data
    save_preview(data_cfg, args.path, args.out, num_images=args.num, seed=args.seed)
    print(f"wrote {args.out}: views of {args.num} images from {args.path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # argparse cannot take positional overrides after options (``preview P --out X key=value``): collect them.
    args, extra = parser.parse_known_args(argv)
    if extra and (args.command != "preview" or any(item.startswith("-") or "=" not in item for item in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return {"write": _write, "check": _check, "preview": _preview}[args.command](args)
    except USER_ERRORS as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
