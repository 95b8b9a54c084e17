"""IQA metrics: SRCC, KRCC on raw scores; PLCC and RMSE after a 4-parameter logistic fit."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import optimize, stats

MIN_POINTS_FOR_FIT = 5  # four parameters need at least five points to be fitted at all


def logistic_4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """f(x) = (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2."""
    z = np.clip(-(x - b3) / max(abs(b4), 1e-12), -500.0, 500.0)
    return (b1 - b2) / (1.0 + np.exp(z)) + b2


def _logistic_jacobian(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    # Analytic: finite differences relative to a parameter near 0 (b3 = mean pred ~ 0) would not move it.
    scale = max(abs(b4), 1e-12)
    s = 1.0 / (1.0 + np.exp(np.clip(-(x - b3) / scale, -500.0, 500.0)))
    ds = (b1 - b2) * s * (1.0 - s)
    return np.stack([s, 1.0 - s, -ds / scale, -ds * (x - b3) / scale**2 * np.sign(b4 or 1.0)], axis=1)


# A fitted transition narrower than this (in standard deviations of the predictions) is a step, not a curve:
# where such a fit stops depends on the last bits of the input, so it is not used (see `compute_metrics`).
STEP_WIDTH = 0.02


def _fsum_mean(values: np.ndarray) -> float:
    # math.fsum is exactly rounded: the same values give the same bits wherever the array lies in memory
    # (numpy's and BLAS's reductions may depend on its alignment).
    return math.fsum(values.tolist()) / len(values)


def _standardized(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(values - mean) / std, with the mean and std (std 0 for constant values)."""
    mean = _fsum_mean(values)
    std = math.sqrt(_fsum_mean((values - mean) ** 2))
    return ((values - mean) / std if std > 0 else values - mean), mean, std


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r from exactly rounded sums (bit-identical for the same values)."""
    if len(a) < 2:
        return float("nan")
    za, _, sa = _standardized(a)
    zb, _, sb = _standardized(b)
    if sa == 0 or sb == 0:
        return float("nan")
    return max(-1.0, min(1.0, _fsum_mean(za * zb)))


def _fit_standardized(x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """The logistic fit of standardized y on standardized x: fixed start, MINPACK's Levenberg-Marquardt."""
    start = [float(np.max(y)), float(np.min(y)), 0.0, 1.0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = optimize.curve_fit(logistic_4, x, y, p0=start, jac=_logistic_jacobian, method="lm",
                                           maxfev=10000)
    except (RuntimeError, ValueError, optimize.OptimizeWarning):
        return None
    if not np.all(np.isfinite(params)) or not np.all(np.isfinite(logistic_4(x, *params))):
        return None
    return params


def fit_logistic_checked(pred: np.ndarray, mos: np.ndarray) -> tuple[np.ndarray | None, str]:
    """Parameters [b1..b4] of `logistic_4` mapping pred to mos and "", or None and why the fit is not used.

    The fit runs on standardized pred and mos (so it does not depend on their scale or offset) from a fixed
    start; a fit that degenerates into a step (transition width under STEP_WIDTH standard deviations of
    pred) is refused."""
    if len(pred) < MIN_POINTS_FOR_FIT or np.ptp(pred) == 0 or np.ptp(mos) == 0:
        return None, "impossible (constant predictions or labels, or fewer than 5 points)"
    x, x_mean, x_std = _standardized(pred)
    y, y_mean, y_std = _standardized(mos)
    params = _fit_standardized(x, y)
    if params is None:
        return None, "did not converge"
    b1, b2, b3, b4 = (float(v) for v in params)
    if abs(b4) < STEP_WIDTH:
        return None, f"degenerate (a step: width {abs(b4):.2g} standard deviations of the predictions)"
    return np.array([b1 * y_std + y_mean, b2 * y_std + y_mean, b3 * x_std + x_mean, abs(b4) * x_std]), ""


def fit_logistic(pred: np.ndarray, mos: np.ndarray) -> np.ndarray | None:
    """Parameters [b1..b4] of `logistic_4` mapping pred to mos, or None where the fit is impossible or
    degenerate (see `fit_logistic_checked`)."""
    pred = np.asarray(pred, dtype=np.float64).ravel()
    mos = np.asarray(mos, dtype=np.float64).ravel()
    return fit_logistic_checked(pred, mos)[0]


def _correlation(func, a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")  # undefined for constant input
    return float(func(a, b)[0])


def compute_metrics(pred: Sequence[float], mos: Sequence[float], fit: bool = True) -> dict:
    """SRCC, PLCC, KRCC (signed, as computed) and RMSE of predictions against subjective scores.

    The PLCC keeps the sign of the relation between pred and mos also after fitting (a decreasing fitted
    curve gives a negative PLCC), so that inversely ranked predictions show as negative.

    With `fit`, PLCC and RMSE are computed after the 4-parameter logistic fit; where the fit is impossible
    (constant predictions, fewer than 5 points), does not converge or degenerates into a step (see
    `fit_logistic_checked`), they are computed on the raw predictions (the linear PLCC) and the result says
    so in `fit_note` (`fitted` is False). Every result is a deterministic function of the values given (the
    same bits on every call). Correlations of constant inputs are NaN.
    """
    pred = np.asarray(pred, dtype=np.float64).ravel()
    mos = np.asarray(mos, dtype=np.float64).ravel()
    if pred.shape != mos.shape:
        raise ValueError(f"pred has {pred.size} values but mos has {mos.size}")
    if pred.size == 0:
        raise ValueError("compute_metrics needs at least one prediction")
    if not (np.all(np.isfinite(pred)) and np.all(np.isfinite(mos))):
        raise ValueError("predictions and scores must be finite (got NaN or inf)")

    fitted_pred, note, direction = pred, "", 1.0
    if fit:
        params, why = fit_logistic_checked(pred, mos)
        if params is None:
            note = f"logistic fit {why}: PLCC and RMSE computed without fitting"
            warnings.warn(note, RuntimeWarning, stacklevel=2)
        else:
            fitted_pred = logistic_4(pred, *params)
            # A decreasing fitted curve means pred and mos are inversely related: keep that sign in PLCC.
            direction = 1.0 if params[0] >= params[1] else -1.0
    return {
        "srcc": _correlation(stats.spearmanr, pred, mos),
        "plcc": direction * _pearson(fitted_pred, mos),
        "krcc": _correlation(stats.kendalltau, pred, mos),
        "rmse": math.sqrt(_fsum_mean((fitted_pred - mos) ** 2)),
        "fitted": bool(fit and fitted_pred is not pred),
        "fit_note": note,
        "n": int(pred.size),
    }


def oriented(metrics: dict, *, trained_higher_is_better: bool, test_higher_is_better: bool) -> dict:
    """Correlations oriented so that a model that ranks quality right reads positive.

    A model predicts in the direction of its training labels, so the sign flips exactly when the
    training set's and the test set's label directions differ (e.g. trained on MOS, tested on DMOS).
    """
    if trained_higher_is_better == test_higher_is_better:
        return dict(metrics)
    flipped = dict(metrics)
    for key in ("srcc", "plcc", "krcc"):
        flipped[key] = -metrics[key]
    return flipped


def quality_sum(metrics: dict) -> float:
    """SRCC + PLCC + KRCC (the original's criterion for the best epoch); -inf where any of them is NaN."""
    total = metrics["srcc"] + metrics["plcc"] + metrics["krcc"]
    return float("-inf") if math.isnan(total) else float(total)
