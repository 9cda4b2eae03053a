"""The noise floor of a study: seed spread, confidence intervals, comparisons and the set of best candidates.

A study repeats its reference points with extra seeds (``noise: {repeats: K}``); the repeats give the
*pooled* seed standard deviation of the target metric,

    s_p = sqrt( sum_i sum_j (x_ij - mean_i)^2 / sum_i (n_i - 1) ),   df = sum_i (n_i - 1),

over every spec ``i`` trained with ``n_i >= 2`` seeds. Assuming one seed spread for the whole design space
(the usual one-way ANOVA assumption; the repeats measure it where it can be measured), a spec trained with
``n`` seeds has the 95 % interval ``mean ± t(0.975, df) · s_p / sqrt(n)``, and two specs differ by more than
noise when ``|mean_a - mean_b| > t(0.975, df) · s_p · sqrt(1/n_a + 1/n_b)`` (Welch-free pooled t-test at the
5 % level, two-sided). The *best set* holds every spec not significantly worse than the top one.

Kendall's tau between the proxy and the final metric gets a percentile bootstrap interval over specs
(resampled with replacement, seeded, so a report is reproducible).

Pure Python plus scipy (``t`` quantiles, ``kendalltau``); no torch, no ray, no pandas.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: Two-sided confidence level of every interval and test.
LEVEL = 0.95
BOOTSTRAP_SAMPLES = 2000


@dataclass(frozen=True)
class NoiseFloor:
    """The pooled seed standard deviation ``std`` with ``df`` degrees of freedom (None: not measurable)."""

    std: float | None
    df: int
    groups: dict[str, list[float]]

    @property
    def t(self) -> float | None:
        """The two-sided ``LEVEL`` quantile of Student's t with ``df`` degrees of freedom."""
        if self.std is None or self.df < 1:
            return None
        from scipy.stats import t

        return float(t.ppf(0.5 + LEVEL / 2, self.df))

    def half_width(self, n: int) -> float | None:
        """Half the 95 % interval of a mean over ``n`` seeds."""
        t = self.t
        return None if t is None or n < 1 else t * self.std / math.sqrt(n)

    def differs(self, mean_a: float, n_a: int, mean_b: float, n_b: int) -> int | None:
        """+1 when ``a`` is better than ``b`` by more than noise, -1 when worse, 0 within noise, None unknown."""
        t = self.t
        if t is None:
            return None
        margin = t * self.std * math.sqrt(1 / n_a + 1 / n_b)
        diff = mean_a - mean_b
        return 1 if diff > margin else -1 if diff < -margin else 0


def noise_floor(groups: Mapping[str, Sequence[float]]) -> NoiseFloor:
    """Pooled seed standard deviation over the groups (values of one spec, one per seed) with >= 2 values."""
    clean = {k: [float(v) for v in vs if _finite(v)] for k, vs in groups.items()}
    ss, df = 0.0, 0
    for values in clean.values():
        if len(values) >= 2:
            mean = sum(values) / len(values)
            ss += sum((v - mean) ** 2 for v in values)
            df += len(values) - 1
    return NoiseFloor(math.sqrt(ss / df) if df else None, df, clean)


def best_set(means: Mapping[str, tuple[float, int]], floor: NoiseFloor) -> list[str]:
    """Specs whose mean is not significantly below the top spec's, best first; only the top without a floor.

    ``means`` maps a spec to ``(mean, number of seeds)``.
    """
    if not means:
        return []
    order = sorted(means, key=lambda k: (-means[k][0], k))
    top_mean, top_n = means[order[0]]
    if floor.t is None:
        return order[:1]
    return [k for k in order if floor.differs(means[k][0], means[k][1], top_mean, top_n) != -1]


def kendall_tau_interval(
    x: Sequence[float], y: Sequence[float], samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[float | None, float | None]:
    """Percentile bootstrap 95 % interval of Kendall's tau-b over pairs (None with < 3 pairs).

    Resamples whose values are all tied (tau undefined) are skipped.
    """
    from scipy.stats import kendalltau

    pairs = [(float(a), float(b)) for a, b in zip(x, y, strict=False) if _finite(a) and _finite(b)]
    if len(pairs) < 3:
        return None, None
    rng = random.Random(seed)
    taus = []
    for _ in range(samples):
        draw = [pairs[rng.randrange(len(pairs))] for _ in pairs]
        tau = kendalltau([a for a, _ in draw], [b for _, b in draw]).statistic
        if tau == tau:
            taus.append(float(tau))
    if not taus:
        return None, None
    taus.sort()
    lo = taus[int(math.floor((1 - LEVEL) / 2 * (len(taus) - 1)))]
    hi = taus[int(math.ceil((1 + LEVEL) / 2 * (len(taus) - 1)))]
    return lo, hi


def _finite(x: object) -> bool:
    try:
        return x is not None and math.isfinite(float(x))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


__all__ = ["LEVEL", "NoiseFloor", "best_set", "kendall_tau_interval", "noise_floor"]
