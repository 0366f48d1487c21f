"""What can be measured of an encoder without labels: RankMe (the effective rank of R, Garrido et al. 2023),
H(R) and I(R;Z) with the objective's estimator, and the uniformity of Z (Wang and Isola 2020; lower is more
uniform). The worker (``data.test_path=null``) and ``python -m adadim_dist.evaluate`` both call these."""

from __future__ import annotations

import torch

from .features import collect_outputs

#: Images of the training file (its first ones, centre view) that label-free evaluation embeds.
LABEL_FREE_IMAGES = 2048


def label_free_embeddings(forward, loader, device, limit: int = LABEL_FREE_IMAGES):
    """(R, Z or None) of the first ``limit`` images of ``loader`` (yielding images, or (images, labels)) in
    float64: ``forward`` is a whole model returning (R, Z, logits), or an encoder alone returning R."""
    (r, z), _ = collect_outputs(forward, loader, device, (0, 1), torch.float64, limit)
    return r, z


def label_free_metrics(r: torch.Tensor, z: torch.Tensor | None, objective_cfg) -> dict[str, float]:
    """``eval/rankme`` and ``eval/h_r`` of R; with Z, also ``eval/mi_rz`` and ``eval/uniformity``."""
    from ..objectives.information import effective_rank, information_terms, renyi_entropy, uniformity

    results = {"eval/rankme": float(effective_rank(r)), "eval/images": float(r.shape[0])}
    if z is None:
        results["eval/h_r"] = float(renyi_entropy(r, objective_cfg.mi_order, objective_cfg.kernel,
                                                  objective_cfg.kernel_sigma))
        return results
    terms = information_terms(r, z, objective_cfg.mi_order, objective_cfg.kernel, objective_cfg.kernel_sigma)
    return results | {"eval/h_r": float(terms["h_x"]), "eval/mi_rz": float(terms["mi"]),
                      "eval/uniformity": float(uniformity(z))}


def evaluate_label_free(model, loader, objective_cfg, device, limit: int = LABEL_FREE_IMAGES) -> dict[str, float]:
    """``label_free_metrics`` of ``model`` on the first ``limit`` images of ``loader``."""
    model.eval()
    try:
        r, z = label_free_embeddings(model, loader, device, limit)
    finally:
        model.train()
    return label_free_metrics(r, z, objective_cfg)
