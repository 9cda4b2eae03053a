"""Training-free scores of candidate backbones (``bhsearch score``) and the cost baselines beside them.

``zero_cost``: SynFlow, NASWOT, grad-norm and Zen-score on any module; ``candidates``: score specs
(built width-scaled) at the detector's input and at 32×32, next to params, FLOPs, activations and the
bottom-heavy share from the analytic cost model. Importing this package imports no torch.
"""

from __future__ import annotations

COST_SCORES = ("params", "flops", "activations", "bh_share")
ZERO_COST_SCORES = ("synflow", "naswot", "gradnorm", "zen")
ALL_SCORES = ZERO_COST_SCORES + COST_SCORES

__all__ = ["ALL_SCORES", "COST_SCORES", "ZERO_COST_SCORES"]
