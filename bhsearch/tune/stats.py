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
(resampled with replacement, seeded, so a report is reproducible). :func:`rank_fidelity` scores a cheap
signal against a reference trained with several seeds: Kendall's tau-b and Spearman's rho with a
*hierarchical* bootstrap interval (candidates resampled, then each candidate's seeds), and the top-1 regret.

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
    return _percentiles(taus)


def _percentiles(values: list[float]) -> tuple[float | None, float | None]:
    """The ``LEVEL`` percentile interval of bootstrap values (None, None when there are none)."""
    if not values:
        return None, None
    values = sorted(values)
    lo = values[int(math.floor((1 - LEVEL) / 2 * (len(values) - 1)))]
    hi = values[int(math.ceil((1 + LEVEL) / 2 * (len(values) - 1)))]
    return lo, hi


def _or_nan(value: object) -> float:
    return float(value) if _finite(value) else math.nan


def _correlations(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Kendall's tau-b and Spearman's rho (NaN when a side is constant)."""
    import warnings

    from scipy.stats import ConstantInputWarning, kendalltau, spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        return _or_nan(kendalltau(x, y).statistic), _or_nan(spearmanr(x, y).statistic)


def _resampled_mean(values: Sequence[float], rng: random.Random) -> float:
    """The mean of ``len(values)`` draws with replacement."""
    return sum(rng.choice(values) for _ in values) / len(values)


def rank_fidelity(
    signal: Mapping[str, float],
    reference: Mapping[str, Sequence[float]],
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> dict[str, float | str | None]:
    """How well ``signal`` (one value per candidate, larger = predicted better) ranks the candidates by the
    mean of ``reference`` (the per-seed values of the target metric).

    Returns ``kendall``, ``spearman`` and their 95 % percentile intervals (``*_low``, ``*_high``) from a
    hierarchical bootstrap (candidates resampled with replacement, then each drawn candidate's seeds; a
    resample with a constant side is skipped), the candidate the signal picks (``pick``, its largest value),
    and ``regret``: the best reference mean minus the pick's, with its interval over resampled seeds
    (``regret_low``, ``regret_high``; candidates fixed). Candidates without a finite signal or reference are
    left out; fewer than 3 give None everywhere but ``pick`` and ``regret``.
    """
    keys = sorted(k for k in signal if _finite(signal[k]) and [v for v in reference.get(k, ()) if _finite(v)])
    values = {k: [float(v) for v in reference[k] if _finite(v)] for k in keys}
    out: dict[str, float | str | None] = dict.fromkeys(
        ("kendall", "kendall_low", "kendall_high", "spearman", "spearman_low", "spearman_high", "pick", "regret",
         "regret_low", "regret_high")
    )  # fmt: skip
    if not keys:
        return out
    means = {k: sum(v) / len(v) for k, v in values.items()}
    pick = max(keys, key=lambda k: (float(signal[k]), k))
    out["pick"], out["regret"] = pick, max(means.values()) - means[pick]
    rng = random.Random(seed)
    regrets, taus, rhos = [], [], []
    for _ in range(samples):
        boot = {k: _resampled_mean(values[k], rng) for k in keys}
        regrets.append(max(boot.values()) - boot[pick])
    out["regret_low"], out["regret_high"] = _percentiles(regrets)
    if len(keys) < 3:
        return out
    tau, rho = _correlations([float(signal[k]) for k in keys], [means[k] for k in keys])
    out["kendall"], out["spearman"] = (tau, rho) if tau == tau else (None, None)
    for _ in range(samples):
        draw = [keys[rng.randrange(len(keys))] for _ in keys]
        ref = [_resampled_mean(values[k], rng) for k in draw]
        tau, rho = _correlations([float(signal[k]) for k in draw], ref)
        if tau == tau:
            taus.append(tau)
            rhos.append(rho)
    out["kendall_low"], out["kendall_high"] = _percentiles(taus)
    out["spearman_low"], out["spearman_high"] = _percentiles(rhos)
    return out


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float | int | None]:
    """``a - b`` paired by position (e.g. by seed): the mean, its 95 % t-interval (``low``, ``high``; None
    with fewer than 2 pairs), ``n`` and the per-pair differences."""
    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=False) if _finite(x) and _finite(y)]
    n = len(diffs)
    out: dict = {"mean": None, "low": None, "high": None, "n": n, "diffs": diffs}
    if not n:
        return out
    mean = sum(diffs) / n
    out["mean"] = mean
    if n >= 2:
        from scipy.stats import t

        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
        half = float(t.ppf(0.5 + LEVEL / 2, n - 1)) * sd / math.sqrt(n)
        out["low"], out["high"] = mean - half, mean + half
    return out


def _finite(x: object) -> bool:
    try:
        return x is not None and math.isfinite(float(x))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


__all__ = [
    "LEVEL",
    "NoiseFloor",
    "best_set",
    "kendall_tau_interval",
    "noise_floor",
    "paired_difference",
    "rank_fidelity",
]
