"""The original README's visual results: scored example strips and the t-SNE of the student's HQ-LQ features.

* `examples_figure` — images in rows (e.g. one distortion type per row, increasing level left to right),
  each annotated with the student's score (`test_DistillationIQA_single.py --figure`).
* `difference_codes` — the student's HQ-LQ difference code (the output of its difference encoder, the 256
  values the regressor sees beside the LQ code) for every image of a test set.
* `tsne_figure` — side-by-side t-SNE maps of such codes, e.g. of students trained with and without KD,
  coloured by the quality label (`test_DistillationIQA.py --tsne`). t-SNE is scikit-learn's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common.errors import UserError
from common.files import atomic_write

MAX_DISCRETE_COLOURS = 10  # labels with at most this many distinct values get a legend instead of a colour bar


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write the figure as PNG atomically (a failure leaves no temporary file, a `UserError`) and close it."""
    path = Path(path)
    try:
        atomic_write(path, lambda handle: fig.savefig(handle, format="png"))
    finally:
        _pyplot().close(fig)
    return path


def examples_figure(rows: Sequence[tuple[str, Sequence[tuple[str | os.PathLike | np.ndarray, str]]]],
                    path: str | os.PathLike, title: str = "", tile_inches: float = 1.6, dpi: int = 110) -> Path:
    """A grid of images, one row per `(row title, [(image, caption), ...])`, written as a PNG.

    Images are paths or H x W x 3 uint8 arrays; captions (e.g. "level 3\\nscore 2.41") go under each image.
    """
    if not rows or not any(items for _, items in rows):
        raise UserError("examples figure: no images to draw")
    columns = max(len(items) for _, items in rows)
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), columns, squeeze=False, dpi=dpi,
                             figsize=(tile_inches * columns + 0.4, (tile_inches * 0.75 + 0.45) * len(rows) + 0.5))
    for r, (row_title, items) in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(items):
                ax.axis("off")
                continue
            image, caption = items[c]
            if not isinstance(image, np.ndarray):
                with Image.open(image) as im:
                    image = np.asarray(im.convert("RGB"))
            ax.imshow(image)
            ax.set_xlabel(caption, fontsize=7, labelpad=2)
            if c == 0:
                ax.set_ylabel(row_title, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.4, h_pad=0.3, w_pad=0.2)
    return save_figure(fig, path)


@torch.inference_mode()
def difference_codes(model, test_set, run, epoch: int = 0, ref_key: str = "ref") -> tuple[np.ndarray, np.ndarray]:
    """The model's HQ-LQ difference code per image of `test_set` (mean over its repeats) and the labels.

    The codes are read from the difference encoder while `tools.epoch.predict` runs, so the crops and
    references are those of evaluation round `epoch`.
    """
    from tools.epoch import predict

    captured: list[torch.Tensor] = []
    hook = model.MLP_encoder_diff.register_forward_hook(lambda _m, _i, out: captured.append(out[1].float().cpu()))
    try:
        _, labels = predict(model, test_set.loader, run, epoch, ref_key)
    finally:
        hook.remove()
    codes = torch.cat(captured).numpy().astype(np.float64)
    samples = test_set.loader.dataset.samples
    if len(codes) != len(samples):
        raise RuntimeError(f"{len(codes)} codes for {len(samples)} samples: the test loader must not shuffle")
    per_image: dict[Path, list[np.ndarray]] = {}
    for sample, code in zip(samples, codes):
        per_image.setdefault(sample.lq_path, []).append(code)
    return np.stack([np.mean(v, axis=0) for v in per_image.values()]), labels


def require_tsne():
    """scikit-learn's TSNE class; a `UserError` saying how to install it where it is missing."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise UserError("the t-SNE figure needs scikit-learn: pip install scikit-learn") from None
    return TSNE


def tsne_embedding(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (scikit-learn) of standardised features; the perplexity is capped for small sets."""
    TSNE = require_tsne()  # noqa: N806 (a class)
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 3:
        raise UserError(f"t-SNE needs at least 3 feature vectors, got {x.shape[0] if x.ndim else 0}")
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-8)
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def tsne_figure(panels: Mapping[str, np.ndarray], labels: np.ndarray, path: str | os.PathLike, *,
                label_name: str = "label", title: str = "", seed: int = 0, dpi: int = 110) -> Path:
    """Side-by-side t-SNE maps, one per `{panel title: features [n, d]}`, points coloured by `labels` [n].

    Labels with few distinct values (e.g. distortion levels) get discrete colours and a legend, others a colour bar.
    """
    labels = np.asarray(labels, dtype=np.float64)
    if not panels:
        raise UserError("t-SNE figure: no features to draw")
    for name, feats in panels.items():
        if len(feats) != len(labels):
            raise UserError(f"t-SNE figure: {name} has {len(feats)} feature vectors for {len(labels)} labels")
    plt = _pyplot()
    values = np.unique(labels)
    discrete = len(values) <= MAX_DISCRETE_COLOURS
    fig, axes = plt.subplots(1, len(panels), squeeze=False, figsize=(4.2 * len(panels) + 0.4, 4.8), dpi=dpi)
    cmap = plt.get_cmap("viridis")
    scatter = None
    for ax, (name, feats) in zip(axes[0], panels.items()):
        xy = tsne_embedding(feats, seed)
        if discrete:
            for i, v in enumerate(values):
                mask = labels == v
                colour = cmap(i / max(1, len(values) - 1))
                ax.scatter(xy[mask, 0], xy[mask, 1], s=18, color=colour, label=f"{v:g}", edgecolors="none")
        else:
            scatter = ax.scatter(xy[:, 0], xy[:, 1], s=14, c=labels, cmap=cmap, edgecolors="none")
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if discrete:
        # one row under the panels: a legend beside them overlapped the right-hand panel
        handles, names = axes[0][-1].get_legend_handles_labels()
        fig.legend(handles, names, title=label_name, loc="lower center", ncol=len(values), fontsize=8,
                   title_fontsize=8, frameon=False, handletextpad=0.2, columnspacing=1.0)
        fig.tight_layout(rect=(0, 0.6 / fig.get_figheight(), 1, 0.94 if title else 1))
    else:
        fig.tight_layout(rect=(0, 0, 1, 0.94 if title else 1))
        fig.colorbar(scatter, ax=axes[0].tolist(), label=label_name, shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
