"""Does the target lie inside the source's support?  The density-ratio diagnostic behind TGDP.

TGDP (docs/theory.md, 'TGDP') reweights the source: q = w p with w(x, y) = q(x, y) / p(x, y), estimated by a
domain classifier c(x, y) = P(source | x, y) as w = ((1 - c) / c) (n_s / n_t). It can only produce target
images that the source already holds with some weight. This diagnostic fits that classifier (multinomial
logistic regression, scikit-learn, on [levels / 16, one-hot label]) and reports:

- ``auc``: the ROC AUC of its 5-fold out-of-fold predictions (0.5: the domains overlap; 1: disjoint supports);
- ``mean_weight``: E_p[w] over the source images (out-of-fold weights). If q << p this is 1; in general it is
  the target mass inside the source's support, so a value far below 1 says TGDP cannot reach the target;
- ``ess_fraction``: the effective sample size (sum w)^2 / (n_s sum w^2) of the weights on the source, over n_s
  (1: uniform weights; ~1/n_s: all the weight on one source image);
- ``top10_weight_share``: the share of total weight carried by the 10 heaviest source images.

Example:
    >>> report = density_ratio_diagnostic(task.splits.source, task.target_train(5))
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from shared_embed.errors import DataError
from theory.studies.digits.task import LabelledImages, level_features


def _features(images: LabelledImages) -> np.ndarray:
    return torch.cat([level_features(images.levels), images.one_hot(torch.float64)], 1).numpy()


def density_ratio_diagnostic(
    source: LabelledImages, target: LabelledImages, C: float = 1.0, seed: int = 0
) -> dict[str, Any]:
    """Domain-classifier accuracy and the effective sample size of TGDP's weights on the source (docstring)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    if len(source) < 5 or len(target) < 5:
        raise DataError(f"need >= 5 images per domain, got {len(source)} source and {len(target)} target")
    x = np.concatenate([_features(source), _features(target)])
    is_source = np.concatenate([np.ones(len(source)), np.zeros(len(target))]).astype(int)
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    proba = cross_val_predict(LogisticRegression(C=C, max_iter=2000), x, is_source, cv=folds, method="predict_proba")[
        :, 1
    ]
    auc = float(roc_auc_score(is_source, proba))
    p_source = np.clip(proba[: len(source)], 1e-12, 1 - 1e-12)
    w = (1 - p_source) / p_source * (len(source) / len(target))
    ess = float(w.sum() ** 2 / (len(w) * np.square(w).sum()))
    top = float(np.sort(w)[::-1][:10].sum() / w.sum())
    return {
        "auc": auc,
        "mean_weight": float(w.mean()),
        "ess_fraction": ess,
        "ess": ess * len(w),
        "top10_weight_share": top,
        "n_source": len(source),
        "n_target": len(target),
    }
