"""Statistics against published reference values (and scipy when it happens to be installed)."""

from __future__ import annotations

import math
import random
import time

import pytest

from pytest_modelrollout.stats import (
    binom_cdf,
    bootstrap_quantile_ratio,
    bootstrap_ratio_of_sums,
    mcnemar_exact_p,
    mover_ratio_interval,
    newcombe_interval,
    paired_difference_interval,
    percentile_of_sorted,
    quantile,
    quantile_interval,
    wilson_interval,
    z_value,
)


def approx4(pair: tuple[float, float], expected: tuple[float, float]) -> None:
    assert pair[0] == pytest.approx(expected[0], abs=6e-5)
    assert pair[1] == pytest.approx(expected[1], abs=6e-5)


def test_z_value() -> None:
    assert z_value(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert z_value(0.90) == pytest.approx(1.644854, abs=1e-6)
    with pytest.raises(ValueError):
        z_value(1.0)


@pytest.mark.parametrize(
    ("x", "n", "expected"),
    [
        (8, 10, (0.4902, 0.9433)),
        # Newcombe (1998), Statistics in Medicine 17:857, Table I, Wilson score without CC
        (81, 263, (0.2553, 0.3662)),
        (15, 148, (0.0624, 0.1605)),
        (0, 20, (0.0, 0.1611)),
        (1, 29, (0.0061, 0.1718)),
    ],
)
def test_wilson_reference_values(x: int, n: int, expected: tuple[float, float]) -> None:
    approx4(wilson_interval(x, n), expected)


def test_wilson_edges() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(20, 20)
    assert hi == 1.0 and lo == pytest.approx(0.8389, abs=6e-5)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # Newcombe (1998), Statistics in Medicine 17:873, method 10
        ((56, 70, 48, 80), (0.0524, 0.3339)),
        ((9, 10, 3, 10), (0.1705, 0.8090)),
        # Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables", ch. 4
        ((7, 34, 1, 34), (0.0189, 0.3404)),
    ],
)
def test_newcombe_reference_values(
    args: tuple[int, int, int, int], expected: tuple[float, float]
) -> None:
    approx4(newcombe_interval(*args), expected)


def test_mover_ratio_reference_value() -> None:
    # Fagerland et al., ch. 4: MOVER-R Wilson 7/34 vs 1/34 -> 7.0 (1.1537 to 41.9763)
    approx4(mover_ratio_interval(7, 34, 1, 34), (1.1537, 41.9763))
    lo, hi = mover_ratio_interval(3, 34, 0, 34)
    assert hi == math.inf and lo > 0
    assert mover_ratio_interval(0, 34, 1, 34)[0] == 0.0


def test_paired_difference_reference_value() -> None:
    # Fagerland et al., ch. 8 (Cavo et al., 2012): table [[59, 6], [16, 80]]:
    # Newcombe square-and-add -0.0621 (-0.1186 to -0.0046)
    approx4(paired_difference_interval(59, 6, 16, 80), (-0.1186, -0.0046))


def test_paired_difference_symmetry_and_edges() -> None:
    lo, hi = paired_difference_interval(40, 3, 3, 4)
    assert lo == pytest.approx(-hi)
    assert paired_difference_interval(0, 0, 0, 0) == (-1.0, 1.0)
    lo, hi = paired_difference_interval(30, 0, 0, 0)  # all passed on both sides
    assert lo < 0 < hi


def test_mcnemar_exact() -> None:
    assert mcnemar_exact_p(6, 16) == pytest.approx(
        2 * sum(math.comb(22, k) for k in range(7)) / 2**22
    )
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(5, 5) == 1.0
    assert mcnemar_exact_p(0, 10) == pytest.approx(2 / 1024)


def test_binom_cdf() -> None:
    assert binom_cdf(3, 10, 0.5) == pytest.approx(176 / 1024)
    assert binom_cdf(-1, 10, 0.5) == 0.0
    assert binom_cdf(10, 10, 0.3) == 1.0


def test_quantile_linear_interpolation_like_numpy() -> None:
    assert percentile_of_sorted([1, 2, 3, 4], 0.95) == pytest.approx(3.85)
    assert percentile_of_sorted([10], 0.95) == 10
    assert quantile([4, 1, 3, 2], 0.5) == pytest.approx(2.5)
    assert quantile([], 0.5) is None
    xs = list(range(1, 101))
    assert percentile_of_sorted(xs, 0.95) == pytest.approx(95.05)


def test_quantile_interval_order_statistics() -> None:
    xs = [float(i) for i in range(1, 101)]
    # the classic 95% interval for the median of 100 observations: ranks 40 and 61
    assert quantile_interval(xs, 0.5) == (40.0, 61.0)
    # a two-sided 95% upper bound for p95 needs 0.95**n <= 0.025, i.e. n >= 72
    assert quantile_interval(xs[:71], 0.95)[1] == math.inf
    assert math.isfinite(quantile_interval(xs[:72], 0.95)[1])
    lo, hi = quantile_interval(xs, 0.95)
    assert lo <= 95.05 <= hi


def test_bootstrap_quantile_ratio_deterministic_and_fast() -> None:
    rng = random.Random(1)
    a = sorted(rng.lognormvariate(5, 0.5) for _ in range(10_000))
    b = sorted(x * 1.3 for x in a)
    t0 = time.perf_counter()
    iv = bootstrap_quantile_ratio(a, b, 0.95, seed=7)
    assert time.perf_counter() - t0 < 2.0
    assert iv == bootstrap_quantile_ratio(a, b, 0.95, seed=7)
    assert iv[0] < 1.3 < iv[1]
    assert iv != bootstrap_quantile_ratio(a, b, 0.95, seed=8)


def test_bootstrap_quantile_ratio_matches_naive_resampling() -> None:
    """The O(1) order-statistic draw has the same distribution as a naive resample."""
    rng = random.Random(3)
    a = sorted(rng.expovariate(1.0) for _ in range(40))
    naive_rng = random.Random(11)
    naive = sorted(
        percentile_of_sorted(sorted(naive_rng.choices(a, k=len(a))), 0.95)
        / percentile_of_sorted(sorted(naive_rng.choices(a, k=len(a))), 0.95)
        for _ in range(4000)
    )
    lo, hi = bootstrap_quantile_ratio(a, a, 0.95, n_resamples=4000, seed=5)
    assert lo == pytest.approx(percentile_of_sorted(naive, 0.025), rel=0.12)
    assert hi == pytest.approx(percentile_of_sorted(naive, 0.975), rel=0.12)


def test_bootstrap_ratio_of_sums() -> None:
    rng = random.Random(2)
    costs = [rng.uniform(0.5, 1.5) for _ in range(300)]
    succ = [1.0 if rng.random() < 0.9 else 0.0 for _ in range(300)]
    lo, hi = bootstrap_ratio_of_sums((costs, succ), (costs, succ), n_resamples=500, seed=1)
    assert lo < 1.0 < hi
    one = bootstrap_ratio_of_sums((costs, succ), n_resamples=500, seed=1)
    point = sum(costs) / sum(succ)
    assert one[0] < point < one[1]
    # large samples use the normal limit of the resampled means: still fast and sensible
    big_c = [rng.uniform(0.5, 1.5) for _ in range(20_000)]
    big_s = [1.0] * 20_000
    t0 = time.perf_counter()
    lo, hi = bootstrap_ratio_of_sums((big_c, big_s), (big_c, big_s), seed=3)
    assert time.perf_counter() - t0 < 2.0
    assert lo < 1.0 < hi and hi - lo < 0.05
    with pytest.raises(ValueError):
        bootstrap_ratio_of_sums(([], []))


def test_against_scipy_if_installed() -> None:
    stats = pytest.importorskip("scipy.stats")
    for x, n in [(8, 10), (0, 15), (37, 50)]:
        ci = stats.binomtest(x, n).proportion_ci(0.95, method="wilson")
        approx4(wilson_interval(x, n), (ci.low, ci.high))
    assert mcnemar_exact_p(3, 12) == pytest.approx(stats.binomtest(3, 15, 0.5).pvalue)
