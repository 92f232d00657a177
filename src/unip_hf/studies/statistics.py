"""Seed statistics of the benchmark and ablation harness: mean and sample standard deviation over seeds
(`mean_std`), the paired comparison of two arms run on the same seeds (`paired_comparison`: per-seed differences,
their mean and spread, an exact two-sided sign test and a percentile bootstrap interval of the mean difference), and
`format_mean_std` for tables. Pure Python (no numpy), so that it is exact on small constructed examples.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for a single value).

    Raises:
        ValueError: with no values or a non-finite one.
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std needs at least one value")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"mean_std got a non-finite value: {values}")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def format_mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """`"mean ± std"` of `values * scale` (percent by default), with the number of seeds when more than one."""
    mean, std = mean_std(values)
    text = f"{mean * scale:.{digits}f}"
    return f"{text} ± {std * scale:.{digits}f} (n={len(values)})" if len(values) > 1 else f"{text} (n=1)"


def sign_test_p_value(differences: Sequence[float]) -> float:
    """Exact two-sided sign test of "the median difference is 0": ties (differences of exactly 0) are dropped;
    with k positive of n non-zero differences, p = min(1, 2 * P[X <= min(k, n - k)]) for X ~ Binomial(n, 1/2).
    With no non-zero difference, p = 1. With 3 seeds the smallest possible p is 0.25: a sign test cannot call a
    3-seed difference significant at 0.05, which is the honest answer."""
    nonzero = [d for d in differences if d != 0]
    n = len(nonzero)
    if n == 0:
        return 1.0
    k = sum(1 for d in nonzero if d > 0)
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def bootstrap_interval(differences: Sequence[float], confidence: float = 0.95, resamples: int = 10000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `differences` (resampled with replacement, seeded, so the same
    input always gives the same interval). With few seeds the interval is narrow and optimistic; read it with the
    sign test."""
    values = [float(d) for d in differences]
    if not values:
        raise ValueError("bootstrap_interval needs at least one difference")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choice(values) for _ in range(n)) / n for _ in range(resamples))
    low = means[int(math.floor((1 - confidence) / 2 * (resamples - 1)))]
    high = means[int(math.ceil((1 + confidence) / 2 * (resamples - 1)))]
    return low, high


#: Fewest seeds two arms must share before `paired_comparison` says "better" or "worse".
MIN_PAIRED_SEEDS = 2


def paired_comparison(arm: dict[int, float], reference: dict[int, float], confidence: float = 0.95,
                      resamples: int = 10000) -> dict[str, Any]:
    """Compare an arm with a reference arm on the seeds both have (`{seed: value}` each): differences arm - reference
    per seed, their mean and sample standard deviation, the sign test's p-value, a bootstrap interval of the mean
    difference, and a verdict: "better" / "worse" only when the interval excludes 0 *and* every seed agrees in sign
    (with 3 seeds the sign test alone cannot reach 0.05), else "within noise". With fewer than `MIN_PAIRED_SEEDS`
    shared seeds there is no spread to judge a difference against: the verdict is "no verdict" and `verdict_reason`
    says why.

    Raises:
        ValueError: when the two arms share no seed.
    """
    seeds = sorted(set(arm) & set(reference))
    if not seeds:
        raise ValueError("the two arms have no seed in common; a paired comparison needs the same seeds")
    differences = [float(arm[s]) - float(reference[s]) for s in seeds]
    mean, std = mean_std(differences)
    low, high = bootstrap_interval(differences, confidence, resamples)
    p_value = sign_test_p_value(differences)
    reason = ""
    if len(seeds) < MIN_PAIRED_SEEDS:
        verdict = "no verdict"
        reason = (f"{len(seeds)} paired seed{'s' if len(seeds) != 1 else ''}; a verdict needs at least "
                  f"{MIN_PAIRED_SEEDS} (one difference has no spread to compare it with): run more --seeds")
    elif low > 0 and all(d > 0 for d in differences):
        verdict = "better"
    elif high < 0 and all(d < 0 for d in differences):
        verdict = "worse"
    else:
        verdict = "within noise"
    return {"seeds": seeds, "differences": differences, "mean_difference": mean, "std_difference": std,
            "sign_test_p": p_value, "bootstrap_low": low, "bootstrap_high": high, "confidence": confidence,
            "verdict": verdict, "verdict_reason": reason}


__all__ = ["bootstrap_interval", "format_mean_std", "mean_std", "paired_comparison", "sign_test_p_value"]
