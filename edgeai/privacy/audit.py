"""Empirical DP auditing: a lower bound on ε from a distinguishing experiment.

A mechanism is run many times on two neighbouring inputs, "out" (without a
canary) and "in" (with it).  A distinguisher guesses "in" when a score of the
output exceeds a threshold.  Any (ε, δ)-DP mechanism forces every test to
satisfy ``FPR + e^ε · FNR ≥ 1 - δ`` (and symmetrically), so the observed
rates, taken at their Clopper-Pearson upper confidence limits, give an ε that
the mechanism provably exceeds — with the stated confidence — if its claimed ε
is lower.  An audit cannot prove privacy; it can catch a broken implementation.

The threshold is chosen on one half of the trials and the rates are measured
on the other half, so the choice does not bias the bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats  # (ships no types)

from edgeai.errors import PrivacyError

# sample(include_canary, trials, rng) -> one distinguishing score per trial
Sampler = Callable[[bool, int, np.random.Generator], NDArray[np.floating]]


def _cp_upper(k: ArrayLike, n: ArrayLike, confidence: float) -> NDArray[np.float64]:
    k_arr, n_arr = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    tail = (1 - confidence) / 2
    with np.errstate(invalid="ignore"):
        hi = stats.beta.ppf(1 - tail, k_arr + 1, n_arr - k_arr)
    return np.where(k_arr >= n_arr, 1.0, hi).astype(np.float64)


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided Clopper-Pearson interval for a binomial proportion.

    Parameters
    ----------
    successes, trials
        Observed count and number of trials (``0 <= successes <= trials``, ``trials >= 1``).
    confidence
        Coverage of the interval, e.g. 0.95.

    Returns
    -------
    tuple of float
        ``(lower, upper)``.
    """
    if trials < 1 or not 0 <= successes <= trials:
        raise PrivacyError(
            f"need 0 <= successes <= trials and trials >= 1; got {successes}/{trials}"
        )
    if not 0 < confidence < 1:
        raise PrivacyError(f"confidence must be in (0, 1); got {confidence}")
    tail = (1 - confidence) / 2
    lo = 0.0 if successes == 0 else float(stats.beta.ppf(tail, successes, trials - successes + 1))
    return lo, float(_cp_upper(successes, trials, confidence))


def _eps_lb(
    fp: ArrayLike, negatives: int, fn: ArrayLike, positives: int, *, delta: float, confidence: float
) -> NDArray[np.float64]:
    fpr = _cp_upper(fp, negatives, confidence)
    fnr = _cp_upper(fn, positives, confidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log(np.clip(1 - delta - fnr, 0, None) / fpr)
        b = np.log(np.clip(1 - delta - fpr, 0, None) / fnr)
    best = np.maximum(np.nan_to_num(a, nan=0.0), np.nan_to_num(b, nan=0.0))
    return np.asarray(np.maximum(best, 0.0), dtype=np.float64)


def epsilon_lower_bound(
    false_positives: int,
    negatives: int,
    false_negatives: int,
    positives: int,
    *,
    delta: float,
    confidence: float = 0.95,
) -> float:
    """ε that a mechanism with these error counts must exceed (with ``confidence``).

    ``max(log((1 - δ - FNR_ub) / FPR_ub), log((1 - δ - FPR_ub) / FNR_ub))``, at
    least 0, where ``_ub`` are Clopper-Pearson upper limits.

    Parameters
    ----------
    false_positives, negatives
        "in" guesses on trials without the canary, and the number of such trials.
    false_negatives, positives
        "out" guesses on trials with the canary, and the number of such trials.
    delta
        The δ of the claim being audited.
    confidence
        Of each Clopper-Pearson interval.

    Returns
    -------
    float
        The lower bound on ε.
    """
    for k, n in ((false_positives, negatives), (false_negatives, positives)):
        if n < 1 or not 0 <= k <= n:
            raise PrivacyError(f"error counts must be within their trials; got {k}/{n}")
    return float(
        _eps_lb(
            false_positives,
            negatives,
            false_negatives,
            positives,
            delta=delta,
            confidence=confidence,
        )
    )


@dataclass(frozen=True)
class AuditResult:
    """The outcome of :func:`run_audit`."""

    epsilon_lb: float
    threshold: float
    false_positive_rate: float  # measured on the held-out half
    false_negative_rate: float
    trials: int  # per world, in the held-out half


def _best_threshold(
    out: NDArray[np.float64], inn: NDArray[np.float64], delta: float, confidence: float
) -> float:
    candidates = np.unique(np.quantile(np.concatenate([out, inn]), np.linspace(0, 1, 401)))
    out_s, in_s = np.sort(out), np.sort(inn)
    fp = len(out_s) - np.searchsorted(out_s, candidates, side="right")
    fn = np.searchsorted(in_s, candidates, side="right")
    scores = _eps_lb(fp, len(out_s), fn, len(in_s), delta=delta, confidence=confidence)
    return float(candidates[int(np.argmax(scores))])


def run_audit(
    sample: Sampler,
    trials: int,
    delta: float,
    rng: np.random.Generator,
    confidence: float = 0.95,
) -> AuditResult:
    """Audit a mechanism: choose a threshold on ``trials`` runs, measure on ``trials`` more.

    Parameters
    ----------
    sample
        ``sample(include_canary, n, rng)`` runs the mechanism ``n`` times and returns
        one score per run; higher means "the canary is in".
    trials
        Runs per world in each half (4 · ``trials`` runs in all).
    delta
        The δ of the claim being audited.
    rng
        Randomness for the mechanism.
    confidence
        Of each Clopper-Pearson interval.

    Returns
    -------
    AuditResult
        The ε lower bound and the test that produced it.
    """
    if trials < 10:
        raise PrivacyError(f"an audit needs at least 10 trials per world; got {trials}")

    def draw(include: bool) -> NDArray[np.float64]:
        scores = np.asarray(sample(include, trials, rng), dtype=np.float64)
        if scores.shape != (trials,) or not np.isfinite(scores).all():
            raise PrivacyError(f"sample must return {trials} finite scores; got {scores.shape}")
        return scores

    threshold = _best_threshold(draw(False), draw(True), delta, confidence)
    out, inn = draw(False), draw(True)
    fp, fn = int(np.sum(out > threshold)), int(np.sum(inn <= threshold))
    eps = epsilon_lower_bound(fp, trials, fn, trials, delta=delta, confidence=confidence)
    return AuditResult(eps, threshold, fp / trials, fn / trials, trials)


def gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact ε(δ) of a Gaussian mechanism with sensitivity/σ ratio ``mu`` (Balle & Wang 2018).

    The best ε any audit of one such release can approach.
    """
    if mu <= 0:
        return 0.0

    def delta_at(eps: float) -> float:
        return float(
            stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2)
        )

    lo, hi = 0.0, 1.0
    while delta_at(hi) > delta:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta_at(mid) > delta else (lo, mid)
    return hi
