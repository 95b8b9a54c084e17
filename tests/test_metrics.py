"""compute_metrics against scipy on data with a known answer, and its degenerate cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from tools.metrics import compute_metrics, fit_logistic, logistic_4, oriented, quality_sum


def test_known_ranks():
    pred = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    mos = [1.0, 3.0, 2.0, 4.0, 6.0, 5.0]
    m = compute_metrics(pred, mos, fit=False)
    # two adjacent swaps: d^2 = 4, SRCC = 1 - 6*4/(6*35); KRCC = (13 - 2) / 15
    assert m["srcc"] == pytest.approx(1 - 24 / 210)
    assert m["krcc"] == pytest.approx(11 / 15)
    assert m["plcc"] == pytest.approx(stats.pearsonr(pred, mos)[0])
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((np.array(pred) - np.array(mos)) ** 2)))


def test_against_scipy_on_random_data():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=200)
    mos = pred + rng.normal(scale=0.5, size=200)
    m = compute_metrics(pred, mos, fit=False)
    assert m["srcc"] == pytest.approx(stats.spearmanr(pred, mos)[0])
    assert m["krcc"] == pytest.approx(stats.kendalltau(pred, mos)[0])
    assert m["plcc"] == pytest.approx(stats.pearsonr(pred, mos)[0])


def test_logistic_fit_recovers_a_logistic_relation():
    pred = np.linspace(-4, 4, 81)
    true = (1.0, 9.0, 0.5, 0.8)  # b1 < b2: a decreasing curve
    mos = logistic_4(pred, 9.0, 1.0, 0.5, 0.8)  # increasing from 1 to 9
    m = compute_metrics(pred, mos, fit=True)
    assert m["fitted"] and m["plcc"] == pytest.approx(1.0, abs=1e-6)
    assert m["rmse"] == pytest.approx(0.0, abs=1e-4)
    raw = compute_metrics(pred, mos, fit=False)
    assert raw["plcc"] < 0.99  # the fit is what makes it linear
    # an inverse relation keeps its sign after fitting
    inverse = compute_metrics(pred, logistic_4(pred, *true), fit=True)
    assert inverse["plcc"] == pytest.approx(-1.0, abs=1e-6) and inverse["srcc"] == pytest.approx(-1.0)
    params = fit_logistic(pred, mos)
    np.testing.assert_allclose(logistic_4(pred, *params), mos, atol=1e-4)


def test_constant_predictions_fall_back_and_say_so():
    with pytest.warns(RuntimeWarning, match="without fitting"):
        m = compute_metrics(np.ones(10), np.arange(10.0))
    assert not m["fitted"] and "constant" in m["fit_note"]
    assert np.isnan(m["srcc"]) and np.isnan(m["plcc"]) and np.isnan(m["krcc"])
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((1 - np.arange(10.0)) ** 2)))


def test_a_handful_of_points_falls_back():
    with pytest.warns(RuntimeWarning):
        m = compute_metrics([1.0, 2.0, 3.0], [1.0, 3.0, 2.0])
    assert not m["fitted"]
    assert m["plcc"] == pytest.approx(stats.pearsonr([1, 2, 3], [1, 3, 2])[0])
    assert m["srcc"] == pytest.approx(0.5)


def test_single_point_and_bad_input():
    m = compute_metrics([1.0], [2.0], fit=False)
    assert np.isnan(m["srcc"]) and m["rmse"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="3 values but mos has 2"):
        compute_metrics([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        compute_metrics([1, np.nan, 3], [1, 2, 3])


@pytest.mark.parametrize("trained_higher, test_higher, flips", [
    (True, True, False),    # e.g. trained on KADID-10k, tested on TID2013
    (True, False, True),    # trained on KADID-10k, tested on LIVE's DMOS
    (False, False, False),  # trained and tested on LIVE's DMOS
    (False, True, True),    # trained on LIVE's DMOS, tested on TID2013's MOS
])
def test_oriented_flips_exactly_when_the_label_directions_differ(trained_higher, test_higher, flips):
    m = compute_metrics([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1], fit=False)
    assert m["srcc"] == pytest.approx(-1.0)
    out = oriented(m, trained_higher_is_better=trained_higher, test_higher_is_better=test_higher)
    sign = -1.0 if flips else 1.0
    for key in ("srcc", "plcc", "krcc"):
        assert out[key] == pytest.approx(sign * m[key])
    assert out["rmse"] == m["rmse"] and m["srcc"] == pytest.approx(-1.0)  # the input is not changed


def test_quality_sum_is_the_originals_criterion_and_nan_never_wins():
    assert quality_sum({"srcc": 0.5, "plcc": 0.25, "krcc": 0.125}) == pytest.approx(0.875)
    assert quality_sum({"srcc": np.nan, "plcc": 0.9, "krcc": 0.9}) == -np.inf
