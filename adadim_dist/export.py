"""python -m adadim_dist.export --checkpoint DIR --out encoder.safetensors [--overwrite]

Writes the trained encoder of a checkpoint (``<run.storage_path>/<run.name>/epoch_NNNN``, DDP or DeepSpeed)
as a safetensors file: torchvision's parameter names for ResNet-18/50 (``conv1``, ``bn1``, ``layer1``–
``layer4``; no ``fc``), the project's own for the small CNN, and the architecture in the file's metadata.
Load it back with ``adadim_dist.models.load_encoder(path)``. Prints one JSON line; a bad checkpoint or an
existing output is one line on stderr with exit code 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adadim_dist.export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint directory (epoch_NNNN)")
    parser.add_argument("--out", required=True, type=Path, help="the .safetensors file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)

    from .models.export import ExportError, encoder_state, export_encoder
    from .training.checkpoint import checkpoint_model_state

    try:
        if args.out.exists() and not args.overwrite:
            raise ExportError(f"--out: {args.out} already exists (pass --overwrite to replace it)")
        model_state, config = checkpoint_model_state(args.checkpoint)
        counts = export_encoder(encoder_state(model_state), config["model"], args.out)
    except ExportError as err:
        print(f"adadim_dist.export: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(args.out), "backbone": config["model"]["backbone"], **counts}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
