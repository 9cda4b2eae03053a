"""Seed repeats of the reference points inside a study (``noise: {repeats: K}``).

A repeat is a trial whose config carries ``repeat: k`` (k = 1 .. K-1) next to its ``spec_id``: it trains the
spec with every stage's seed offset by ``k``. Repeats

* are issued first, before the searcher's own trials (``FixedFirst``), so the noise floor is known early;
* run to the end: ASHA never stops them and their results never enter its rungs (``RepeatAwareASHA``; the
  reference points' own search trials run to the end too);
* are never shown to the searcher (Optuna learns only from the trials it proposed);
* are keyed ``SPEC_ID#rK`` in the study's trial record (``trial_key``), so resume tells them from the search
  trial of the same spec.

Ray is imported inside the factories only.
"""

from __future__ import annotations

from typing import Any

REPEAT_KEY = "repeat"


def trial_key(spec_id: str, repeat: int | None = 0) -> str:
    """``spec_id`` for a search trial, ``spec_id#rK`` for the K-th seed repeat."""
    return f"{spec_id}#r{repeat}" if repeat else spec_id


def config_key(config: dict[str, Any]) -> str:
    return trial_key(str(config.get("spec_id")), int(config.get(REPEAT_KEY) or 0))


def repeat_configs(reference_ids: list[str], repeats: int) -> list[dict[str, Any]]:
    """The configs of every extra seed of every reference point, seed-major (all refs at repeat 1 first)."""
    return [{"spec_id": ref, REPEAT_KEY: k} for k in range(1, repeats) for ref in reference_ids]


def fixed_first(configs: list[dict[str, Any]], inner: Any = None):
    """A Tune ``Searcher`` that issues ``configs`` in order, then ``inner``'s suggestions (or finishes)."""
    from ray.tune.search import Searcher

    class FixedFirst(Searcher):
        def __init__(self) -> None:
            super().__init__(metric=getattr(inner, "metric", None), mode=getattr(inner, "mode", None))
            self.queue = [dict(c) for c in configs]
            self.inner = inner
            self.delegated: set[str] = set()

        def set_search_properties(self, metric, mode, config, **spec) -> bool:
            if self.inner is not None:
                self.inner.set_search_properties(metric, mode, config, **spec)
            self._metric, self._mode = metric or self._metric, mode or self._mode
            return True

        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            if self.queue:
                return self.queue.pop(0)
            if self.inner is None:
                return Searcher.FINISHED
            suggestion = self.inner.suggest(trial_id)
            if isinstance(suggestion, dict):
                self.delegated.add(trial_id)
            return suggestion

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if trial_id in self.delegated:
                self.inner.on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in self.delegated:
                self.inner.on_trial_complete(trial_id, result=result, error=error)

        def get_state(self) -> dict[str, Any]:  # Tune snapshots it; bhsearch never restores it
            return {"queue": self.queue, "delegated": sorted(self.delegated)}

        def set_state(self, state: dict[str, Any]) -> None:
            self.queue, self.delegated = list(state["queue"]), set(state["delegated"])

        def save(self, checkpoint_path: str) -> None:
            pass

        def restore(self, checkpoint_path: str) -> None:
            pass

    return FixedFirst()


def repeat_aware_asha(protected: set[str] | frozenset[str] = frozenset(), **kwargs: Any):
    """``ASHAScheduler(**kwargs)`` that lets seed repeats run to the end and keeps them out of its rungs.

    Trials of the ``protected`` spec ids (the reference points) also run to the end, so every comparison has
    its anchors; their results do enter the rungs, as any search trial's.
    """
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class RepeatAwareASHA(ASHAScheduler):
        def on_trial_result(self, tune_controller, trial, result):
            if trial.config.get(REPEAT_KEY):
                return TrialScheduler.CONTINUE
            action = super().on_trial_result(tune_controller, trial, result)
            if trial.config.get("spec_id") in protected and result.get(self._time_attr, 0) < self._max_t:
                return TrialScheduler.CONTINUE
            return action

        def on_trial_complete(self, tune_controller, trial, result):
            if trial.config.get(REPEAT_KEY):
                self._trial_info.pop(trial.trial_id, None)
                return
            super().on_trial_complete(tune_controller, trial, result)

    return RepeatAwareASHA(**kwargs)


__all__ = ["REPEAT_KEY", "config_key", "fixed_first", "repeat_aware_asha", "repeat_configs", "trial_key"]
