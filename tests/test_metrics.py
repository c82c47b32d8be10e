"""Metrics (lsi.metrics): Wilson intervals against published values, DROP EM/F1, calibration bins, paired tests."""

import dataclasses
import json
import math

import numpy as np
import pytest

from lsi.metrics import (
    Estimate,
    accuracy,
    bootstrap_ci,
    calibration_bins,
    drop_exact_match,
    drop_f1,
    mcnemar_exact_p,
    paired_difference,
    wilson_interval,
)


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I (Wilson score, no correction).
@pytest.mark.parametrize(
    "k, n, low, high",
    [(0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605),
     (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_wilson_interval_known_values(k, n, low, high):
    got_low, got_high = wilson_interval(k, n)
    assert got_low == pytest.approx(low, abs=5e-5)
    assert got_high == pytest.approx(high, abs=5e-5)


def test_wilson_interval_edges_and_errors():
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low90, high90 = wilson_interval(5, 20, confidence=0.90)
    low95, high95 = wilson_interval(5, 20)
    assert low95 < low90 < 0.25 < high90 < high95
    with pytest.raises(ValueError):
        wilson_interval(11, 10)
    with pytest.raises(ValueError):
        wilson_interval(1, 10, confidence=1.0)


def test_accuracy_estimate():
    estimate = accuracy([True] * 165 + [False] * 235)
    assert (estimate.k, estimate.n, estimate.method) == (165, 400, "wilson")
    assert estimate.value == pytest.approx(0.4125)
    assert str(estimate) == "41.2% [36.5, 46.1] (n=400)"
    assert json.loads(json.dumps(estimate.as_dict()))["k"] == 165
    assert accuracy(np.array([1, 0, 1, 1])).k == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        estimate.value = 0.5


def test_accuracy_empty_and_invalid():
    empty = accuracy([])
    assert empty.n == 0 and math.isnan(empty.value) and str(empty) == "n/a (n=0)"
    with pytest.raises(ValueError, match="booleans"):
        accuracy([0, 1, 2])


def test_bootstrap_is_deterministic_and_sensible():
    values = np.random.default_rng(1).uniform(size=500)
    first, second = bootstrap_ci(values, seed=3), bootstrap_ci(values, seed=3)
    assert first == second
    assert bootstrap_ci(values, seed=4) != first
    assert first.value == pytest.approx(values.mean())
    assert first.ci_low < first.value < first.ci_high
    assert first.k is None and first.method == "bootstrap-percentile"
    # A constant has no spread; a 0/1 mean agrees with the normal approximation at large n.
    constant = bootstrap_ci([0.5] * 50)
    assert constant.ci_low == constant.ci_high == 0.5
    binary = (np.random.default_rng(2).uniform(size=2000) < 0.4).astype(float)
    estimate = bootstrap_ci(binary, num_resamples=1000)
    half_width = 1.96 * math.sqrt(binary.mean() * (1 - binary.mean()) / binary.size)
    assert (estimate.ci_high - estimate.ci_low) / 2 == pytest.approx(half_width, rel=0.15)
    assert math.isnan(bootstrap_ci([]).value)


@pytest.mark.parametrize(
    "prediction, golds, expected",
    [
        ("21", ["21"], 1.0),
        ("21", ["21 yards"], 1.0),
        ("21 yards", "21", 1.0),
        ("34 yards", ["34-yard"], 1.0),
        ("21.0", ["21"], 1.0),
        ("twenty-one", ["21"], 1.0),
        ("1,000", ["1000"], 1.0),
        ("22", ["21"], 0.0),
        ("the Ravens", ["Ravens"], 1.0),
        ("Ravens", ["Steelers", "ravens"], 1.0),
        ("Ravens", ["Steelers"], 0.0),
        ("Puerto Rican", ["Puerto Rican and Dominican"], 0.0),
        ("U.S. Army", ["US Army"], 1.0),
        (None, ["21"], 0.0),
        ("", ["21"], 0.0),
    ],
)
def test_drop_exact_match(prediction, golds, expected):
    assert drop_exact_match(prediction, golds) == expected


@pytest.mark.parametrize(
    "prediction, golds, expected",
    [
        ("21", ["21 yards"], 1.0),
        ("22", ["21"], 0.0),
        ("Puerto Rican", ["Puerto Rican and Dominican"], 2 / 3),
        ("john", ["John Kasay"], 2 / 3),
        ("John Kasay", ["Kasay", "John Kasay"], 1.0),
        ("2018", ["2018 and 2016"], 0.5),
        ("2017", ["2018 and 2016"], 0.0),  # shares no number with the gold
        ("21", ["21 and 7"], 0.5),
        ("the Ravens won", ["Ravens"], 2 / 3),
        ("Steelers", ["Ravens"], 0.0),
        (None, ["Ravens"], 0.0),
    ],
)
def test_drop_f1(prediction, golds, expected):
    assert drop_f1(prediction, golds) == pytest.approx(expected)


def test_drop_needs_golds():
    with pytest.raises(ValueError, match="gold"):
        drop_f1("21", [])
    with pytest.raises(ValueError, match="gold"):
        drop_exact_match(None, [])


def test_calibration_bin_edges():
    shares = [0.0, 0.05, 0.1, 3 / 10, 0.7, 0.95, 0.999, 1.0]
    correct = [False, False, True, True, False, True, True, True]
    bins = calibration_bins(shares, correct, num_bins=10)
    assert len(bins) == 10
    assert [b["count"] for b in bins] == [2, 1, 0, 1, 0, 0, 0, 1, 0, 3]
    assert bins[0]["bin_low"] == 0.0 and bins[9]["bin_high"] == 1.0
    assert bins[2]["accuracy"] is None and bins[2]["mean_share"] is None
    last = bins[9]
    assert last["mean_share"] == pytest.approx((0.95 + 0.999 + 1.0) / 3)
    assert last["accuracy"] == 1.0 and last["ci_high"] == 1.0
    assert last["ci_low"] == pytest.approx(wilson_interval(3, 3)[0])
    assert sum(b["count"] for b in calibration_bins(shares, correct, num_bins=1)) == len(shares)


@pytest.mark.parametrize("num_bins", [4, 5, 10])
def test_calibration_vote_shares_land_in_their_exact_bin(num_bins):
    # Shares k/m as voting computes them, for every m up to 40: bin floor(k * B / m), and a unanimous vote in the last.
    shares, expected = [], []
    for m in range(1, 41):
        for k in range(m + 1):
            shares.append(k / m)
            expected.append(min(k * num_bins // m, num_bins - 1))
    bins = calibration_bins(shares, [True] * len(shares), num_bins=num_bins)
    assert [b["count"] for b in bins] == np.bincount(expected, minlength=num_bins).tolist()


def test_calibration_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibration_bins([1.5], [True])
    with pytest.raises(ValueError, match="same length"):
        calibration_bins([0.5, 0.5], [True])


def _paired(both, gained, lost, neither):
    before = [True] * both + [False] * gained + [True] * lost + [False] * neither
    after = [True] * both + [True] * gained + [False] * lost + [False] * neither
    return before, after


def test_paired_difference_newcombe_example():
    # Newcombe (1998), "Improved confidence intervals for the difference between binomial proportions based on
    # paired data": the table 36 / 12 / 2 / 0 has a score interval 0.0569 to 0.3404.
    result = paired_difference(*_paired(36, 12, 2, 0))
    assert result.difference == pytest.approx(0.2)
    assert result.ci_low == pytest.approx(0.0569, abs=5e-5)
    assert result.ci_high == pytest.approx(0.3404, abs=5e-5)
    assert (result.gained, result.lost, result.n) == (12, 2, 50)
    assert result.p_value == pytest.approx(2 * (1 + 14 + 91) / 2**14)  # 2 * P(X <= 2), X ~ Bin(14, 1/2)


def test_paired_difference_sanity():
    same = paired_difference(*_paired(5, 0, 0, 5))
    assert same.difference == 0 and same.p_value == 1.0 and same.ci_low < 0 < same.ci_high
    forward, backward = paired_difference(*_paired(30, 10, 4, 6)), paired_difference(*_paired(30, 4, 10, 6))
    assert forward.difference == pytest.approx(-backward.difference)
    assert forward.ci_low == pytest.approx(-backward.ci_high) and forward.ci_high == pytest.approx(-backward.ci_low)
    assert forward.p_value == backward.p_value
    assert forward.after.k == 40 and forward.before.k == 34
    all_gained = paired_difference(*_paired(0, 20, 0, 0))
    assert all_gained.difference == 1.0 and all_gained.ci_high == 1.0 and 0 < all_gained.ci_low < 1
    assert all_gained.p_value == pytest.approx(2 / 2**20)
    assert "McNemar" in str(forward) and json.dumps(forward.as_dict())
    with pytest.raises(ValueError, match="same length"):
        paired_difference([True], [True, False])


def test_paired_difference_interval_matches_normal_theory_at_large_n():
    before, after = _paired(4000, 1500, 900, 3600)
    result = paired_difference(before, after)
    n = 10000
    difference = (1500 - 900) / n
    wald = 1.96 * math.sqrt(((1500 + 900) / n - difference**2) / n)
    assert result.ci_low == pytest.approx(difference - wald, abs=2e-3)
    assert result.ci_high == pytest.approx(difference + wald, abs=2e-3)
    assert result.p_value < 1e-30


@pytest.mark.parametrize("gained, lost, expected", [(0, 0, 1.0), (1, 0, 1.0), (5, 0, 0.0625), (3, 3, 1.0),
                                                    (8, 2, 0.109375)])
def test_mcnemar_exact(gained, lost, expected):
    assert mcnemar_exact_p(gained, lost) == pytest.approx(expected)


def test_estimate_is_a_plain_record():
    estimate = Estimate(0.5, 10, 5, 0.2366, 0.7634, "wilson")
    assert estimate.as_dict()["confidence"] == 0.95
