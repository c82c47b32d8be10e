"""Accuracy with confidence intervals, DROP exact match and F1, calibration bins, and paired before/after tests.

Every number the report shows comes with its count and a 95% interval, so that a 2-point gain on 400 questions is not
read as a result:
- `accuracy` gives a Wilson score interval. Unlike the normal ("Wald") interval it never leaves [0, 1], is not a
  zero-width interval at 0% or 100%, and keeps close to its nominal coverage for small n; it is also what the
  calibration plot needs, since many vote-share bins hold few questions and sit near 0 or 1.
- `bootstrap_ci` is for means of scores that are not 0/1 (DROP F1): a seeded percentile bootstrap.
- `paired_difference` compares two systems on the same questions (before and after self-improvement): Newcombe's
  score interval for a paired difference of proportions and McNemar's exact test on the discordant questions.

DROP. PAPER.md (section 6, "Metric" and section 9 item 7) suggests DROP is scored as exact match of the parsed number,
units stripped. Here a DROP answer is first read by `lsi.tasks.answers.canonicalize(_, "drop")`: a number with at most
three unit words ("21 yards", "34-yard") becomes the canonical number ("21"), anything else becomes normalized text
(lowercase, no punctuation or articles, canonical number tokens). So "21" and "21 yards" are an exact match, and a
prediction "21" against gold "twenty-one" is too. F1 is the bag-of-tokens F1 of those normalized forms, with the DROP
rule that when the gold holds numbers, a prediction that shares none of them scores 0; two numeric answers score 1 or
0, like exact match. Both take the max over the gold alternatives. Unlike the official DROP script there is no
multi-span alignment: each gold alternative is one span (the data we have lists alternatives, not span sets).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import statistics
from typing import Sequence

import numpy as np

from lsi.tasks.answers import canonicalize, is_decimal_number

DEFAULT_CONFIDENCE = 0.95


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    return statistics.NormalDist().inv_cdf(0.5 + confidence / 2)


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A proportion or mean with its interval. `k` is the number of successes for a proportion, None for a mean of
    non-binary scores. `value` is nan when n is 0."""

    value: float
    n: int
    k: int | None
    ci_low: float
    ci_high: float
    method: str
    confidence: float = DEFAULT_CONFIDENCE

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        if self.n == 0:
            return "n/a (n=0)"
        return f"{100 * self.value:.1f}% [{100 * self.ci_low:.1f}, {100 * self.ci_high:.1f}] (n={self.n})"


def wilson_interval(k: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval for k successes in n trials; (0, 1) when n is 0."""
    if not 0 <= k <= n:
        raise ValueError(f"Need 0 <= k <= n, got k={k}, n={n}.")
    if n == 0:
        return 0.0, 1.0
    z = _z(confidence)
    p = k / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At k = 0 and k = n the bound is exactly 0 or 1; rounding must not move it off.
    low = 0.0 if k == 0 else max(0.0, center - half)
    high = 1.0 if k == n else min(1.0, center + half)
    return low, high


def _as_bools(values: Sequence, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-d sequence, got shape {array.shape}.")
    if array.size and not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must hold only booleans (or 0/1).")
    return array.astype(bool)


def accuracy(correct: Sequence[bool], confidence: float = DEFAULT_CONFIDENCE) -> Estimate:
    """The fraction of True values with a Wilson score interval."""
    correct = _as_bools(correct, "correct")
    n, k = int(correct.size), int(correct.sum())
    low, high = wilson_interval(k, n, confidence)
    return Estimate(k / n if n else math.nan, n, k, low, high, "wilson", confidence)


def bootstrap_ci(
    values: Sequence[float],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    num_resamples: int = 2000,
    seed: int = 0,
) -> Estimate:
    """The mean of `values` with a percentile bootstrap interval; deterministic for a given seed (resamples are drawn
    in fixed-size chunks, so memory stays small for large n)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"values must be a 1-d sequence, got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError("values must be finite.")
    _z(confidence)  # validates
    n = int(array.size)
    if n == 0:
        return Estimate(math.nan, 0, None, math.nan, math.nan, "bootstrap-percentile", confidence)
    rng = np.random.default_rng(seed)
    means = np.empty(num_resamples)
    chunk = max(1, min(num_resamples, 2_000_000 // n))
    for start in range(0, num_resamples, chunk):
        stop = min(num_resamples, start + chunk)
        indices = rng.integers(0, n, size=(stop - start, n))  # [chunk, n]
        means[start:stop] = array[indices].mean(axis=1)
    alpha = 1 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return Estimate(float(array.mean()), n, None, float(low), float(high), "bootstrap-percentile", confidence)


# --- DROP ----------------------------------------------------------------------------------------------------------


def _drop_form(answer: str | None) -> str | None:
    return None if answer is None else canonicalize(answer, "drop")


def _numbers_equal(a: str, b: str) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=0.0)


def _golds(golds: Sequence[str] | str) -> list[str]:
    golds = [golds] if isinstance(golds, str) else list(golds)
    if not golds:
        raise ValueError("At least one gold answer is needed.")
    return golds


def drop_exact_match(prediction: str | None, golds: Sequence[str] | str) -> float:
    """1.0 when the prediction's DROP form equals any gold's (numbers compared numerically), else 0.0."""
    predicted = _drop_form(prediction)
    if predicted is None:
        _golds(golds)
        return 0.0
    for gold in _golds(golds):
        expected = _drop_form(gold)
        if expected is None:
            continue
        if is_decimal_number(predicted) and is_decimal_number(expected):
            if _numbers_equal(predicted, expected):
                return 1.0
        elif predicted == expected:
            return 1.0
    return 0.0


def _token_f1(predicted: str, expected: str) -> float:
    if is_decimal_number(predicted) and is_decimal_number(expected):
        return 1.0 if _numbers_equal(predicted, expected) else 0.0
    predicted_tokens, expected_tokens = predicted.split(), expected.split()
    gold_numbers = {t for t in expected_tokens if is_decimal_number(t)}
    predicted_numbers = {t for t in predicted_tokens if is_decimal_number(t)}
    if gold_numbers and not gold_numbers & predicted_numbers:
        return 0.0
    common = sum((collections.Counter(predicted_tokens) & collections.Counter(expected_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted_tokens), common / len(expected_tokens)
    return 2 * precision * recall / (precision + recall)


def drop_f1(prediction: str | None, golds: Sequence[str] | str) -> float:
    """The best bag-of-tokens F1 of the prediction against the gold alternatives (see the module docstring)."""
    golds = _golds(golds)
    predicted = _drop_form(prediction)
    if predicted is None:
        return 0.0
    scores = [_token_f1(predicted, expected) for expected in map(_drop_form, golds) if expected is not None]
    return max(scores, default=0.0)


# --- calibration ---------------------------------------------------------------------------------------------------


def calibration_bins(
    vote_shares: Sequence[float],
    correct: Sequence[bool],
    num_bins: int = 10,
    confidence: float = DEFAULT_CONFIDENCE,
) -> list[dict]:
    """Accuracy against vote share (the paper's Figure 2): `num_bins` equal bins [i/B, (i+1)/B) over [0, 1], the
    last one closed so that a unanimous vote (share 1.0) is in it. A share within 1e-9 of an edge counts as on the
    edge (3/10 computed in floating point is in the bin that starts at 0.3). Every bin is listed; an empty bin has
    count 0 and None for its mean share, accuracy and interval."""
    shares = np.asarray(vote_shares, dtype=np.float64)
    correct = _as_bools(correct, "correct")
    if shares.ndim != 1 or shares.shape != correct.shape:
        raise ValueError(f"vote_shares and correct must be 1-d of the same length, got {shares.shape} and "
                         f"{correct.shape}.")
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}.")
    if shares.size and not ((shares >= -1e-9) & (shares <= 1 + 1e-9)).all():
        raise ValueError("vote_shares must lie in [0, 1].")
    index = np.clip(np.floor(shares * num_bins + 1e-9).astype(np.int64), 0, num_bins - 1)
    bins = []
    for b in range(num_bins):
        members = index == b
        count = int(members.sum())
        row = {"bin_low": b / num_bins, "bin_high": (b + 1) / num_bins, "count": count, "mean_share": None,
               "accuracy": None, "ci_low": None, "ci_high": None}
        if count:
            estimate = accuracy(correct[members], confidence)
            row.update(mean_share=float(shares[members].mean()), accuracy=estimate.value, ci_low=estimate.ci_low,
                       ci_high=estimate.ci_high)
        bins.append(row)
    return bins


# --- paired comparison ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """Accuracy after minus accuracy before on the same n questions. `gained`: wrong before and right after;
    `lost`: right before and wrong after. `p_value` is McNemar's exact two-sided test on gained vs lost."""

    before: Estimate
    after: Estimate
    difference: float
    ci_low: float
    ci_high: float
    n: int
    gained: int
    lost: int
    p_value: float
    method: str = "newcombe-paired-score-cc; mcnemar-exact"
    confidence: float = DEFAULT_CONFIDENCE

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "before": self.before.as_dict(), "after": self.after.as_dict()}

    def __str__(self) -> str:
        if self.n == 0:
            return "n/a (n=0)"
        return (f"{100 * self.difference:+.1f} points [{100 * self.ci_low:+.1f}, {100 * self.ci_high:+.1f}] "
                f"(n={self.n}, +{self.gained}/-{self.lost}, McNemar p={self.p_value:.3g})")


def mcnemar_exact_p(gained: int, lost: int) -> float:
    """Two-sided exact McNemar p-value: twice the smaller binomial(gained + lost, 1/2) tail, capped at 1."""
    if gained < 0 or lost < 0:
        raise ValueError(f"Counts must be >= 0, got {gained} and {lost}.")
    discordant = gained + lost
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, i) for i in range(min(gained, lost) + 1))
    return min(1.0, 2 * tail / 2**discordant)


def paired_difference(
    before: Sequence[bool], after: Sequence[bool], confidence: float = DEFAULT_CONFIDENCE
) -> PairedDifference:
    """How accuracy changed between two systems scored on the same questions (position i is the same question).

    The interval is Newcombe's (1998) hybrid score interval for a difference of paired proportions, with the
    continuity-corrected correlation (his method 11): it combines the two Wilson intervals with the observed
    correlation of the pairs, stays inside [-1, 1] and behaves at small n and near 0 or 1, where the normal interval
    on paired differences does not. The correction keeps the interval from collapsing to zero width when no
    question changed (method 10 without it gives [0, 0] for 5 right and 5 wrong twice).
    """
    before_array, after_array = _as_bools(before, "before"), _as_bools(after, "after")
    if before_array.shape != after_array.shape:
        raise ValueError(f"before and after must have the same length, got {before_array.size} and "
                         f"{after_array.size}.")
    n = int(before_array.size)
    both = int((before_array & after_array).sum())
    gained = int((~before_array & after_array).sum())
    lost = int((before_array & ~after_array).sum())
    neither = n - both - gained - lost
    before_estimate, after_estimate = accuracy(before_array, confidence), accuracy(after_array, confidence)
    p_value = mcnemar_exact_p(gained, lost)
    if n == 0:
        return PairedDifference(before_estimate, after_estimate, math.nan, math.nan, math.nan, 0, 0, 0, p_value,
                                confidence=confidence)
    p_after, p_before = after_estimate.value, before_estimate.value
    l_after, u_after = after_estimate.ci_low, after_estimate.ci_high
    l_before, u_before = before_estimate.ci_low, before_estimate.ci_high
    # Phi correlation of the 2x2 table (after correct?, before correct?), with Newcombe's continuity correction of
    # a positive ad - bc (ad - bc - n/2, floored at 0); 0 when a margin is empty.
    margins = (both + gained) * (lost + neither) * (both + lost) * (gained + neither)
    cross = both * neither - gained * lost
    if cross > 0:
        cross = max(cross - n / 2, 0.0)
    phi = cross / math.sqrt(margins) if margins else 0.0
    difference = p_after - p_before
    below = math.sqrt(max(0.0, (p_after - l_after) ** 2 - 2 * phi * (p_after - l_after) * (u_before - p_before)
                          + (u_before - p_before) ** 2))
    above = math.sqrt(max(0.0, (u_after - p_after) ** 2 - 2 * phi * (u_after - p_after) * (p_before - l_before)
                          + (p_before - l_before) ** 2))
    return PairedDifference(
        before=before_estimate,
        after=after_estimate,
        difference=difference,
        ci_low=max(-1.0, difference - below),
        ci_high=min(1.0, difference + above),
        n=n,
        gained=gained,
        lost=lost,
        p_value=p_value,
        confidence=confidence,
    )
