"""Health monitors of a pre-training run: one-line warnings when the logged metrics say that training
has stopped doing its job, instead of a loss curve that merely looks calm.

Checked on every logged row (rank 0). A condition must hold for ``patience`` consecutive rows, after
the first ``grace`` fraction of the schedule (initial transients: a fresh Mixer's near-constant mask,
a random encoder's clustered embeddings), before it warns; it warns once, and again only after it
cleared. The row gets ``health_warnings``: the names (metrics) of the conditions that hold right now.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping

#: within-image variance below this is a flat mask (a Mixup-like constant); docs/algorithm.md §3.7
FLAT_MASK_VAR = 0.005
#: a mask with more than this share of pixels below 0.05 or above 0.95 is degenerate (all-0 / all-1)
SATURATED_SHARE = 0.5
#: an ODC cluster more than this many times the mean cluster size has swallowed others
GIANT_CLUSTER = 5.0
#: SwAV codes with more entropy than this share of ln K are uniform (a random encoder's start at ~0.93)
UNIFORM_CODES = 0.99


@dataclass
class Condition:
    metric: str
    test: Callable[[float], bool]
    message: Callable[[float], str]


def conditions(embed_dim: int) -> List[Condition]:
    floor = 0.2 / math.sqrt(embed_dim)
    return [
        Condition(
            "collapse_std",
            lambda v: v < floor,
            lambda v: (
                f"collapse_std {v:.4f} < 0.2/sqrt(D) = {floor:.4f}: the embeddings are collapsing "
                "(healthy ~1/sqrt(D)); check the augmentation, lower train.lr, or add BN to the projector"
            ),
        ),
        Condition(
            "mixer_mask_within_var",
            lambda v: v < FLAT_MASK_VAR,
            lambda v: (
                f"the Mixer's masks are flat (within-image variance {v:.4f} < {FLAT_MASK_VAR}): "
                "SAMix is mixing like Mixup; check mix.mixer_lr and the feature-map size (>= 4x4). "
                "On small, low-detail images (e.g. digits) the Mixer's own losses can prefer a blend "
                "(docs/algorithm.md §3.7)"
            ),
        ),
        Condition(
            "mixer_mask_saturated",
            lambda v: v > SATURATED_SHARE,
            lambda v: (
                f"the Mixer's masks are saturated ({v:.0%} of pixels < 0.05 or > 0.95): whole images "
                "are chosen, not regions; lower mix.mixer_lr or raise mix.mask_loss_weight"
            ),
        ),
        Condition(
            "odc_empty",
            lambda v: v > 0,
            lambda v: (
                f"ODC has {v:.0f} empty cluster(s) between refills; lower mix.odc.num_clusters or "
                "mix.odc.small_cluster_interval"
            ),
        ),
        Condition(
            "odc_largest_vs_mean",
            lambda v: v > GIANT_CLUSTER,
            lambda v: (
                f"ODC's largest cluster is {v:.1f}x the mean size (> {GIANT_CLUSTER:g}x): the "
                "pseudo-labels are degenerate; check collapse_std and mix.odc.min_cluster"
            ),
        ),
        Condition(
            "swav_code_entropy",
            lambda v: v > UNIFORM_CODES,
            lambda v: (
                f"SwAV's codes are uniform (entropy {v:.3f} of ln K): the swapped prediction has no "
                "signal and the loss sits at ln K; raise method.temperature (0.5 on small data, "
                "configs/digits/swav.yaml) or lower method.sinkhorn_epsilon"
            ),
        ),
    ]


class HealthMonitor:
    """Feed it every logged row with :meth:`check`; it returns the warnings to print."""

    def __init__(self, embed_dim: int, total_steps: int, patience: int = 3, grace: float = 0.1) -> None:
        self.conditions = conditions(embed_dim)
        self.start = int(grace * total_steps)
        self.patience = patience
        self.streak: Dict[str, int] = {c.metric: 0 for c in self.conditions}
        self.warned: Dict[str, bool] = {c.metric: False for c in self.conditions}

    def check(self, step: int, row: Mapping[str, float]) -> List[str]:
        """Warnings raised by this row; sets nothing in ``row`` (see :meth:`active`)."""
        messages = []
        for c in self.conditions:
            value = row.get(c.metric)
            holds = value is not None and step > self.start and c.test(float(value))
            self.streak[c.metric] = self.streak[c.metric] + 1 if holds else 0
            if not holds:
                self.warned[c.metric] = False
            elif self.streak[c.metric] >= self.patience and not self.warned[c.metric]:
                self.warned[c.metric] = True
                messages.append(f"[ssmix] warning at step {step}: {c.message(float(value))}")
        return messages

    @property
    def active(self) -> int:
        """How many conditions held at the last row."""
        return sum(1 for n in self.streak.values() if n > 0)

    @property
    def active_names(self) -> List[str]:
        """The metrics whose conditions held at the last row (``metrics.jsonl``'s ``health_warnings``)."""
        return [name for name, n in self.streak.items() if n > 0]
