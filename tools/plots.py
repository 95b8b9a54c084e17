"""Scatter plots of predictions against subjective scores, with the fitted logistic curve."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tools.metrics import compute_metrics, fit_logistic, logistic_4
from tools.visuals import save_figure


def scatter_plot(pred: np.ndarray, label: np.ndarray, path: str | os.PathLike, title: str,
                 label_name: str = "MOS") -> Path:
    """Write a PNG scatter of `pred` vs `label` with the 4-parameter logistic fit and the metrics in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred, label = np.asarray(pred, dtype=float), np.asarray(label, dtype=float)
    metrics = compute_metrics(pred, label, fit=True)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    ax.scatter(pred, label, s=10, alpha=0.6, edgecolors="none")
    params = fit_logistic(pred, label)
    if params is not None:
        xs = np.linspace(pred.min(), pred.max(), 200)
        ax.plot(xs, logistic_4(xs, *params), color="tab:red", lw=1.5, label="logistic fit")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("predicted score")
    ax.set_ylabel(label_name)
    ax.set_title(f"{title}\nSRCC {metrics['srcc']:.3f}  PLCC {metrics['plcc']:.3f}  KRCC {metrics['krcc']:.3f}",
                 fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
