"""python -m adadim_dist.evaluate --checkpoint DIR | --run-id ID [--config FILE] [--out DIR] [key=value ...]

Offline evaluation of a trained encoder: frozen features of the training images (the kNN bank and the linear
classifier's training set: the first ``eval.bank_size`` images, or all; ``eval.bank_path`` names another file
for them) and of the test images, with a
progress bar; kNN top-1 for each ``eval.knn_k`` and linear evaluation top-1 on raw and on L2-normalised
features (recipe: ``adadim_dist/evaluation/linear.py``); a 2-D PCA map of the test embeddings coloured by
label (``embeddings_map.png``). Printed as a table and one JSON line, and logged to the training run in
MLflow under ``eval_offline/`` (figure included). The extraction, kNN and label-free statistics are the
training worker's own (``adadim_dist.evaluation``).

Without a labelled test set (``data.test_path=null``, as a run trained on unlabelled images has), the
evaluation is label-free, as in training: RankMe, H(R) and, from a checkpoint (which has the projector),
I(R;Z) and the uniformity of Z, on the first 2,048 training images.

``--checkpoint``: a checkpoint directory (DDP or DeepSpeed); its saved config is the base, ``key=value``
overrides apply on top (e.g. ``data.test_path=...`` to evaluate on other data). ``--run-id``: the encoder
that the run logged to MLflow, with the run's params (or ``--config``) as the config. One process, CPU or
GPU; for a large bank submit it as a Ray job (``ray job submit -- python -m adadim_dist.evaluate ...``).
Exit codes: 0, 2 for a user error (one line), 1 for a failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

logger = logging.getLogger("adadim_dist.evaluate")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m adadim_dist.evaluate", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a checkpoint directory (<storage>/<run>/epoch_NNNN)")
    source.add_argument("--run-id", help="an MLflow run whose logged encoder is evaluated")
    parser.add_argument("--config", help="base config for --run-id (default: the run's params)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: tracking.uri, MLFLOW_TRACKING_URI, local)")
    parser.add_argument("--out", type=Path, help="where the figure and results.json go "
                        "(default: reports/evaluate/<run name>)")
    parser.add_argument("--no-log", action="store_true", help="do not log to MLflow")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. eval.bank_size=20000")
    return parser.parse_intermixed_args(argv)


def config_from_params(params: dict[str, str]):
    """The config tree a run was trained with, rebuilt from its MLflow params (flattened, stringified)."""
    import yaml

    from .config import Config, _set_dotted, flatten

    known = set(flatten(Config()))
    tree: dict = {}
    for key, text in params.items():
        if key in known:
            _set_dotted(tree, key, yaml.safe_load(text) if text != "None" else None)
    return tree


def load_encoder_and_config(args):
    """(encoder module in eval mode, validated Config, MLflow run id or None, the whole model or None): a
    checkpoint has the whole model (projector included), a run's logged encoder the encoder alone."""
    from .config import ConfigError, config_with_overrides, load_config
    from .models import build_model
    from .training.checkpoint import checkpoint_model_state

    if args.checkpoint is not None:
        model_state, saved = checkpoint_model_state(args.checkpoint)
        cfg = config_with_overrides(saved, args.overrides)
        model = build_model(cfg.model)
        model.load_state_dict(model_state)
        from .training.checkpoint import load_state

        run_id = load_state(args.checkpoint).get("mlflow_run_id")
        return model.encoder.eval(), cfg, run_id, model.eval()
    from mlflow.artifacts import download_artifacts
    from mlflow.tracking import MlflowClient

    from mlflow.exceptions import MlflowException

    from .training.tracking import mask_credentials, sqlite_path

    store_file = sqlite_path(args.tracking_uri or "")
    if store_file is not None and not store_file.is_file():  # MLflow would create an empty store there
        raise ConfigError(f"--tracking-uri: {store_file}: no such MLflow store")
    client = MlflowClient(tracking_uri=args.tracking_uri)
    try:
        run = client.get_run(args.run_id)
    except MlflowException as err:
        where = mask_credentials(args.tracking_uri or "the default tracking store")
        raise ConfigError(f"--run-id: no run {args.run_id} in {where} ({err.error_code})") from None
    cfg = load_config(args.config, args.overrides) if args.config else \
        config_with_overrides(config_from_params(run.data.params), args.overrides)
    path = download_artifacts(run_id=args.run_id, artifact_path="encoder", tracking_uri=args.tracking_uri)
    program = torch.export.load(str(Path(path) / "data" / "model.pt2"))
    return program.module(), cfg, args.run_id, None


def features_of(encoder, cfg, path, device, limit, label, labels: bool = True):
    from tqdm import tqdm

    from .data import build_eval_loader
    from .evaluation import extract, label_free_embeddings

    loader = build_eval_loader(cfg.data, path, 512, rank=0, world_size=1, distributed=False,
                               device=device if device.type == "cuda" else None, labels=labels)
    try:
        total = len(loader) if limit is None else min(len(loader), -(-limit // 512))
        # tqdm redraws in place on a terminal; in a log (ray job logs, CI) it writes a line every 30 s at most.
        interactive = sys.stderr.isatty()
        bar = tqdm(loader, total=total, desc=f"features of {label}", unit="batch", file=sys.stderr,
                   mininterval=0.5 if interactive else 30, dynamic_ncols=interactive)
        return extract(encoder, bar, device, limit) if labels else label_free_embeddings(encoder, bar, device, limit)
    finally:
        loader.close()


def embedding_map(features: torch.Tensor, labels: torch.Tensor | None, out: Path) -> Path:
    """Embeddings on their first two principal components, coloured by label when there are labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centred = features.double() - features.double().mean(dim=0)
    _, _, v = torch.pca_lowrank(centred, q=2, center=False, niter=4)
    points = (centred @ v[:, :2]).numpy()
    fig, ax = plt.subplots(figsize=(6.5, 6))
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.6)
        which = "training embeddings (no labels)"
    else:
        scatter = ax.scatter(points[:, 0], points[:, 1], c=labels.numpy(), cmap="tab10", s=2, alpha=0.6)
        ax.legend(*scatter.legend_elements(), title="label", loc="best", fontsize=7, markerscale=0.8)
        which = "test embeddings"
    ax.set(xlabel="PC 1", ylabel="PC 2", title=f"{which} (PCA), n = {len(points)}")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def evaluate(encoder, cfg, device: torch.device, model=None) -> tuple[dict[str, float], torch.Tensor,
                                                                      torch.Tensor | None]:
    """(results, test embeddings, their labels): kNN and linear evaluation, or without a labelled test set
    the label-free statistics of the first training images (``model``, the whole SSL model, adds Z's)."""
    from .evaluation import LABEL_FREE_IMAGES, knn_top1_across_ranks, label_free_metrics, linear_probe_top1
    from .evaluation.online import bank_file

    encoder = encoder.to(device)  # in eval mode already (a torch.export program refuses .eval())
    if cfg.data.test_path is None:
        forward = model.to(device).eval() if model is not None else encoder
        r, z = features_of(forward, cfg, cfg.data.train_path, device, LABEL_FREE_IMAGES, "train", labels=False)
        metrics = label_free_metrics(r, z, cfg.objective)
        return {f"eval_offline/{key.removeprefix('eval/')}": value for key, value in metrics.items()}, r, None
    bank, bank_labels, _ = features_of(encoder, cfg, bank_file(cfg), device, cfg.eval.bank_size, "the bank")
    test, test_labels, _ = features_of(encoder, cfg, cfg.data.test_path, device, None, "test")
    top1, class_top1 = knn_top1_across_ranks(bank, bank_labels, test, test_labels, tuple(cfg.eval.knn_k),
                                             cfg.eval.knn_temperature, cfg.model.num_classes, device, shared=False,
                                             per_class=cfg.eval.per_class)
    results = {f"eval_offline/knn_top1_k{k}": value for k, value in top1.items()}
    if cfg.eval.per_class:
        results |= {f"eval_offline/knn_class_top1_k{cfg.eval.knn_k[0]}_c{c}": v for c, v in class_top1.items()}
    for name, l2 in (("raw", False), ("l2", True)):
        results[f"eval_offline/linear_top1_{name}"] = linear_probe_top1(
            bank, bank_labels, test, test_labels, cfg.model.num_classes, l2_normalise=l2)
    results["eval_offline/bank_images"] = float(bank.shape[0])
    results["eval_offline/test_images"] = float(test.shape[0])
    return results, test, test_labels


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[adadim] %(message)s")
    from .config import ConfigError
    from .data.sources import DataError
    from .models.export import ExportError
    from .training.checkpoint import CheckpointError
    from .training.tracking import mask_credentials, resolve_tracking_uri

    try:
        encoder, cfg, run_id, model = load_encoder_and_config(args)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        results, test, test_labels = evaluate(encoder, cfg, device, model)
    except (ConfigError, DataError, CheckpointError, ExportError, FileNotFoundError) as err:
        print(f"adadim_dist.evaluate: error: {mask_credentials(str(err))}", file=sys.stderr)
        return 2
    out = args.out or Path("reports") / "evaluate" / cfg.run.name
    out.mkdir(parents=True, exist_ok=True)
    figure = embedding_map(test, test_labels, out / "embeddings_map.png")
    (out / "results.json").write_text(json.dumps(results, indent=1))

    # A checkpoint's config has credentials masked (config.storable): such a URI cannot be used.
    saved_uri = cfg.tracking.uri if cfg.tracking.uri and "***" not in cfg.tracking.uri else None
    uri = args.tracking_uri or resolve_tracking_uri(saved_uri, Path(cfg.run.storage_path))
    logged = False
    if run_id and not args.no_log:
        try:
            from mlflow.entities import Metric
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=uri)
            client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in results.items()])
            client.log_artifact(run_id, str(figure), "eval_offline")
            logged = True
        except Exception as err:  # noqa: BLE001 - the results are printed and saved either way
            logger.warning("could not log to MLflow run %s (%s: %s)", run_id, type(err).__name__,
                           mask_credentials(str(err)))
    width = max(len(k) for k in results)
    print("\n".join(["", "=== offline evaluation ==="]
                    + [f"{key:<{width}} : {value:.2f}" for key, value in results.items()]
                    + [f"embeddings map: {figure}"]))
    print(json.dumps({"run_id": run_id, "logged_to_mlflow": logged, "tracking_uri": mask_credentials(uri),
                      "figure": str(figure), **results}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
