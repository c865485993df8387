"""Small, pure-Python statistics for rollout verdicts (no numpy, no scipy).

Every function is deterministic: the bootstraps take an explicit seed and use their own
``random.Random``.

* :func:`wilson_interval` -- Wilson score interval for one proportion.
* :func:`newcombe_interval` -- Newcombe's hybrid score interval (his method 10) for the
  difference of two *independent* proportions.
* :func:`mover_ratio_interval` -- MOVER-R (Donner & Zou) interval for the ratio of two
  independent proportions, built from the same Wilson intervals.
* :func:`paired_difference_interval` -- Newcombe's square-and-add interval (his method 10 for
  paired data) for the difference of two proportions measured on the same items, with the
  continuity-corrected correlation estimate; :func:`mcnemar_exact_p` -- exact McNemar test.
* :func:`quantile` -- linear interpolation between order statistics (numpy's default).
* :func:`quantile_interval` -- distribution-free interval for a quantile from order statistics.
* :func:`bootstrap_quantile_ratio` / :func:`bootstrap_ratio_of_sums` -- seeded percentile
  bootstraps for a ratio of p95 latencies and a ratio of costs per success.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from statistics import NormalDist

__all__ = [
    "binom_cdf",
    "bootstrap_quantile_ratio",
    "bootstrap_ratio_of_sums",
    "mcnemar_exact_p",
    "mover_ratio_interval",
    "newcombe_interval",
    "paired_difference_interval",
    "percentile_of_sorted",
    "quantile",
    "quantile_interval",
    "wilson_interval",
    "z_value",
]

Interval = tuple[float, float]

DEFAULT_RESAMPLES = 2000
# Above this many resampled draws per role, a ratio-of-sums bootstrap draws the resampled
# means from their normal limit (central limit theorem) instead of resampling item by item.
_EXACT_DRAW_BUDGET = 1_000_000


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence!r}")


def z_value(confidence: float) -> float:
    """Two-sided standard normal quantile, e.g. 1.959964 for 0.95."""
    _check_confidence(confidence)
    return NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)


# --------------------------------------------------------------------------- proportions


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval for ``successes / n``. ``n == 0`` gives ``(0.0, 1.0)``."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return (0.0, 1.0)
    z = z_value(confidence)
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


def newcombe_interval(x1: int, n1: int, x2: int, n2: int, confidence: float = 0.95) -> Interval:
    """Newcombe hybrid score interval for ``x1/n1 - x2/n2`` (independent samples)."""
    if n1 <= 0 or n2 <= 0:
        return (-1.0, 1.0)
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson_interval(x1, n1, confidence)
    l2, u2 = wilson_interval(x2, n2, confidence)
    d = p1 - p2
    lo = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return (max(-1.0, lo), min(1.0, hi))


def mover_ratio_interval(x1: int, n1: int, x2: int, n2: int, confidence: float = 0.95) -> Interval:
    """MOVER-R Wilson interval for ``(x1/n1) / (x2/n2)`` (independent samples).

    The upper bound is ``math.inf`` when ``x2 == 0``; the interval is ``(0, inf)`` when there
    is no data.
    """
    if n1 <= 0 or n2 <= 0:
        return (0.0, math.inf)
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson_interval(x1, n1, confidence)
    l2, u2 = wilson_interval(x2, n2, confidence)
    pp = p1 * p2
    # Donner & Zou (2012); a negative discriminant or denominator marks the special cases
    lo = 0.0
    den_lo = u2 * (2 * p2 - u2)
    disc_lo = pp * pp - l1 * u2 * (2 * p1 - l1) * (2 * p2 - u2)
    if x1 > 0 and den_lo != 0 and disc_lo >= 0:
        lo = max(0.0, (pp - math.sqrt(disc_lo)) / den_lo)
    hi = math.inf
    den_hi = l2 * (2 * p2 - l2)
    disc_hi = pp * pp - u1 * l2 * (2 * p1 - u1) * (2 * p2 - l2)
    if x2 > 0 and den_hi != 0 and disc_hi >= 0:
        value = (pp + math.sqrt(disc_hi)) / den_hi
        if value >= 0:
            hi = value
    return (lo, hi)


def paired_difference_interval(
    a: int, b: int, c: int, d: int, confidence: float = 0.95
) -> Interval:
    """Interval for ``p1 - p2 = (b - c) / n`` from a paired 2x2 table.

    ``a``: both succeed, ``b``: only the first succeeds, ``c``: only the second succeeds,
    ``d``: both fail; ``p1 = (a + b) / n``, ``p2 = (a + c) / n``. Newcombe's square-and-add
    method (1998, method 10): Wilson intervals for both margins, combined with the
    continuity-corrected phi correlation estimate.
    """
    n = a + b + c + d
    if n <= 0:
        return (-1.0, 1.0)
    r1, r2, s1, s2 = a + b, c + d, a + c, b + d
    p1, p2 = r1 / n, s1 / n
    l1, u1 = wilson_interval(r1, n, confidence)
    l2, u2 = wilson_interval(s1, n, confidence)
    if min(r1, r2, s1, s2) == 0:
        phi = 0.0
    else:
        cross = a * d - b * c
        if cross > n / 2:
            num = cross - n / 2
        elif cross >= 0:
            num = 0.0
        else:
            num = float(cross)
        phi = num / math.sqrt(float(r1) * r2 * s1 * s2)
    est = p1 - p2
    dl1, du2 = p1 - l1, u2 - p2
    dl2, du1 = p2 - l2, u1 - p1
    lo = est - math.sqrt(max(0.0, dl1 * dl1 + du2 * du2 - 2 * phi * dl1 * du2))
    hi = est + math.sqrt(max(0.0, dl2 * dl2 + du1 * du1 - 2 * phi * dl2 * du1))
    return (max(-1.0, lo), min(1.0, hi))


def binom_cdf(k: int, n: int, p: float) -> float:
    """``P(X <= k)`` for ``X ~ Binomial(n, p)``; exact summation in log space."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    lgn = math.lgamma(n + 1)
    total = 0.0
    for i in range(k + 1):
        total += math.exp(lgn - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq)
    return min(1.0, total)


def mcnemar_exact_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts ``b`` and ``c``."""
    m = b + c
    if m == 0:
        return 1.0
    return min(1.0, 2.0 * binom_cdf(min(b, c), m, 0.5))


# --------------------------------------------------------------------------- quantiles


def percentile_of_sorted(xs: Sequence[float], q: float) -> float:
    """Quantile ``q`` (0..1) of already sorted data, linear interpolation (numpy default)."""
    n = len(xs)
    if n == 0:
        raise ValueError("quantile of an empty sample")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q!r}")
    h = (n - 1) * q
    k = math.floor(h)
    frac = h - k
    if k + 1 >= n or frac == 0.0:
        return float(xs[min(k, n - 1)])
    return float(xs[k] + frac * (xs[k + 1] - xs[k]))


def quantile(xs: Sequence[float], q: float) -> float | None:
    """Quantile ``q`` of ``xs`` (any order); ``None`` for an empty sample."""
    if not xs:
        return None
    return percentile_of_sorted(sorted(xs), q)


def quantile_interval(xs_sorted: Sequence[float], q: float, confidence: float = 0.95) -> Interval:
    """Distribution-free interval for the ``q`` quantile from order statistics.

    The ranks are chosen so that each tail misses with probability at most
    ``(1 - confidence) / 2`` (Binomial(n, q) counts); a bound that no order statistic can
    guarantee is ``-inf`` / ``inf`` (e.g. the upper bound of a p95 at 95% with fewer than 72 samples).
    """
    _check_confidence(confidence)
    n = len(xs_sorted)
    if n == 0:
        return (-math.inf, math.inf)
    tail = (1.0 - confidence) / 2.0
    # cdf[k] = P(B <= k), B ~ Binomial(n, q): the number of observations below the quantile
    cdf = _binom_cdf_table(n, q)
    # lower: the largest rank l (1-based) with P(B <= l - 1) <= tail
    lo_rank = 0
    for r in range(1, n + 1):
        if cdf[r - 1] <= tail:
            lo_rank = r
        else:
            break
    # upper: the smallest rank u with P(B >= u) = 1 - cdf[u - 1] <= tail
    hi_rank = n + 1
    for r in range(n, 0, -1):
        if 1.0 - cdf[r - 1] <= tail:
            hi_rank = r
        else:
            break
    lo = float(xs_sorted[lo_rank - 1]) if lo_rank >= 1 else -math.inf
    hi = float(xs_sorted[hi_rank - 1]) if hi_rank <= n else math.inf
    return (lo, hi)


def _binom_cdf_table(n: int, p: float) -> list[float]:
    if p <= 0.0:
        return [1.0] * (n + 1)
    if p >= 1.0:
        return [0.0] * n + [1.0]
    lp, lq = math.log(p), math.log1p(-p)
    lgn = math.lgamma(n + 1)
    out: list[float] = []
    total = 0.0
    for i in range(n + 1):
        total += math.exp(lgn - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq)
        out.append(min(1.0, total))
    out[-1] = 1.0
    return out


# --------------------------------------------------------------------------- bootstrap


def _percentile_interval(values: list[float], confidence: float) -> Interval:
    values.sort()
    tail = (1.0 - confidence) / 2.0
    return (percentile_of_sorted(values, tail), percentile_of_sorted(values, 1.0 - tail))


def _resampled_quantile(xs_sorted: Sequence[float], q: float, rng: random.Random) -> float:
    """The ``q`` quantile of one bootstrap resample of ``xs_sorted``, drawn in O(1).

    A resample draws ``n`` indices ``floor(U * n)`` with ``U`` uniform; the mapping is monotone,
    so the resample's k-th order statistic is ``xs[floor(U_(k) * n)]`` where ``U_(k)`` is the
    k-th order statistic of ``n`` uniforms, which is ``Beta(k, n + 1 - k)``. The next one is
    the minimum of the remaining ``n - k`` uniforms above it. This is exactly the bootstrap
    distribution of the quantile, without materialising the resample.
    """
    n = len(xs_sorted)
    if n == 1:
        return float(xs_sorted[0])
    h = (n - 1) * q
    k = math.floor(h)  # 0-based: order statistic number k + 1
    frac = h - k
    u1 = rng.betavariate(k + 1, n - k)
    x1 = float(xs_sorted[min(int(u1 * n), n - 1)])
    if frac == 0.0 or k + 1 >= n:
        return x1
    m = n - k - 1
    u2 = u1 + (1.0 - u1) * (1.0 - rng.random() ** (1.0 / m))
    x2 = float(xs_sorted[min(int(u2 * n), n - 1)])
    return x1 + frac * (x2 - x1)


def bootstrap_quantile_ratio(
    stable_sorted: Sequence[float],
    candidate_sorted: Sequence[float],
    q: float = 0.95,
    *,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Percentile-bootstrap interval for ``quantile(candidate) / quantile(stable)``.

    Both samples must be sorted ascending and non-empty. Cost is O(n_resamples), independent
    of the sample sizes. A resampled stable quantile of 0 gives an infinite ratio.
    """
    _check_confidence(confidence)
    if not stable_sorted or not candidate_sorted:
        raise ValueError("bootstrap of an empty sample")
    rng = random.Random(seed)
    ratios: list[float] = []
    for _ in range(n_resamples):
        s = _resampled_quantile(stable_sorted, q, rng)
        c = _resampled_quantile(candidate_sorted, q, rng)
        ratios.append(_ratio(c, s))
    return _percentile_interval(ratios, confidence)


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return 1.0 if num == 0 else math.inf


def _resampled_ratio_of_sums(
    nums: Sequence[float], dens: Sequence[float], n_resamples: int, rng: random.Random
) -> list[float]:
    """``sum(num) / sum(den)`` over ``n_resamples`` resamples of the items."""
    n = len(nums)
    out: list[float] = []
    if n * n_resamples <= _EXACT_DRAW_BUDGET:
        pairs = list(zip(nums, dens, strict=True))
        for _ in range(n_resamples):
            sample = rng.choices(pairs, k=n)
            out.append(_ratio(sum(p[0] for p in sample), sum(p[1] for p in sample)))
        return out
    # normal limit of the resampled means (n is large here)
    mx = math.fsum(nums) / n
    my = math.fsum(dens) / n
    vxx = math.fsum((x - mx) ** 2 for x in nums) / n
    vyy = math.fsum((y - my) ** 2 for y in dens) / n
    vxy = math.fsum((x - mx) * (y - my) for x, y in zip(nums, dens, strict=True)) / n
    sx = math.sqrt(vxx / n)
    sy = math.sqrt(vyy / n)
    rho = vxy / math.sqrt(vxx * vyy) if vxx > 0 and vyy > 0 else 0.0
    rho = max(-1.0, min(1.0, rho))
    tail = math.sqrt(max(0.0, 1.0 - rho * rho))
    for _ in range(n_resamples):
        z1 = rng.gauss(0.0, 1.0)
        z2 = rng.gauss(0.0, 1.0)
        x = mx + sx * z1
        y = my + sy * (rho * z1 + tail * z2)
        out.append(_ratio(max(0.0, x), max(0.0, y)))
    return out


def bootstrap_ratio_of_sums(
    stable: tuple[Sequence[float], Sequence[float]],
    candidate: tuple[Sequence[float], Sequence[float]] | None = None,
    *,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Percentile-bootstrap interval for a ratio of sums, or for the ratio of two of them.

    Each role is ``(nums, dens)`` per item (e.g. cost per call and 1/0 for a successful task),
    so the statistic ``sum(nums) / sum(dens)`` is a cost per success (or, with dens all 1, a
    mean). With ``candidate`` the interval is for ``stat(candidate) / stat(stable)``, both
    roles resampled independently; without it, for ``stat(stable)`` alone.
    """
    _check_confidence(confidence)
    rng = random.Random(seed)
    if not stable[0] or len(stable[0]) != len(stable[1]):
        raise ValueError("bootstrap needs equally long, non-empty nums and dens")
    first = _resampled_ratio_of_sums(stable[0], stable[1], n_resamples, rng)
    if candidate is None:
        return _percentile_interval(first, confidence)
    if not candidate[0] or len(candidate[0]) != len(candidate[1]):
        raise ValueError("bootstrap needs equally long, non-empty nums and dens")
    second = _resampled_ratio_of_sums(candidate[0], candidate[1], n_resamples, rng)
    ratios = [
        _ratio(c, s) if math.isfinite(s) else (0.0 if math.isfinite(c) else 1.0)
        for s, c in zip(first, second, strict=True)
    ]
    return _percentile_interval(ratios, confidence)
