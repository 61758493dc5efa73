"""The contract between SSL methods and mixers (docs/algorithm.md §2.1, §2.3): every type and rule both
sides share, and nothing else. Methods and mixers import this module, never each other.

- A method's forward on the un-mixed views returns a :class:`MethodOutput` (its losses, the
  stop-gradient target embeddings of both views, optional negatives, soft targets and feature maps).
- The step draws a :class:`Pairing` (row n mixes view ``view_a`` of sample n with view ``view_b`` of
  sample ``perm[n]``, ``perm`` a uniform :func:`derangement`) and a lambda, and hands the mixer the two
  sources, the lambda and a :class:`MixContext`; the mixer returns :class:`MixedInputs`.
- The method scores a :class:`MixedBatch` (the mixed inputs with their pairing) toward
  lam x target(source a) + (1 - lam) x target(source b), where the target of a source is its *other*
  view: :meth:`Pairing.targets` is the one place this rule is written.

``mix.cross_view: true`` pairs view 1 of i with view 2 of pi(i) (targets: view 2 of i, view 1 of pi(i));
``false`` pairs view 1 of both (targets: view 2 of both, the paper's Fig. 8 reading).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ssmix.transfer import to_device


@dataclass
class MethodOutput:
    """What one forward pass of a method on the un-mixed views produces."""

    losses: Dict[str, Tensor]
    # (2, N, D): L2-normalised target-branch embeddings of views 1 and 2, no grad. When the step does not
    # mix (``Method.step_mixes`` false) a method may return view 2's alone, (1, N, D).
    keys: Tensor
    negatives: Optional[Tensor] = None  # (K, D) extra negatives (queue snapshot), no grad
    targets: Optional[Tensor] = None  # (2, N, ...) method-specific mixed-view targets (default: keys)
    feature_maps: Optional[Tensor] = None  # (2, N, C, h, w) target-branch maps at `map_at`, no grad
    metrics: Dict[str, Tensor | float] = field(default_factory=dict)  # 0-dim tensors: read at log steps


def other_view(view: int) -> int:
    """The view whose target a source of view ``view`` is trained toward (docs/algorithm.md §2.3)."""
    return 1 - view


@dataclass(frozen=True)
class Pairing:
    """Which two sources each mixed row is made of: view ``view_a`` of sample n (source a) and view
    ``view_b`` of sample ``perm[n]`` (source b)."""

    view_a: int
    view_b: int
    perm: Tensor  # (N,) partner of row n

    @classmethod
    def draw(cls, n: int, cross_view: bool, device: torch.device | str = "cpu") -> "Pairing":
        """View 1 of i with view 2 (``cross_view``) or view 1 (not) of pi(i), pi a uniform derangement."""
        return cls(0, 1 if cross_view else 0, derangement(n, device))

    def with_partners(self, perm: Tensor) -> "Pairing":
        """The same views with other partners (the SAMix Mixer's own batch)."""
        return Pairing(self.view_a, self.view_b, perm)

    def sources(self, per_view: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
        """Rows of the two sources in ``per_view`` (views, or anything indexed [view][sample]):
        ``(per_view[view_a][n], per_view[view_b][perm[n]])``."""
        return per_view[self.view_a], per_view[self.view_b][self.perm]

    def targets(self, per_view: Tensor) -> Tuple[Tensor, Tensor]:
        """The targets of the two sources: the same samples' *other* view (docs/algorithm.md §2.3)."""
        return per_view[other_view(self.view_a)], per_view[other_view(self.view_b)][self.perm]

    def target_index(self, n: int) -> Tuple[Tensor, Tensor]:
        """The same two targets as row indices into ``per_view.flatten(0, 1)`` (in-batch candidates)."""
        rows = torch.arange(n, device=self.perm.device)
        return other_view(self.view_a) * n + rows, other_view(self.view_b) * n + self.perm


@dataclass
class MixedInputs:
    """What a mixer returns: the mixed inputs and the lambda it actually used."""

    x: Tensor  # mixed inputs, entering the online trunk at position `start`
    lam: Tensor  # (N,) effective weight of source a
    start: int = 0  # 0 = images; ManifoldMix mixes hidden maps after layer 1 or 2
    mask: Optional[Tensor] = None  # (N, 1, H, W) per-pixel weight of source a (for logging and figures)


@dataclass
class MixedBatch:
    """What a method's ``mixed_loss`` scores (docs/algorithm.md §2.1 step 8): row n of ``inputs.x`` is
    trained toward lam[n] x target(source a) + (1 - lam[n]) x target(source b) of ``pairing``."""

    inputs: MixedInputs
    pairing: Pairing

    @property
    def x(self) -> Tensor:
        return self.inputs.x

    @property
    def lam(self) -> Tensor:
        return self.inputs.lam

    @property
    def start(self) -> int:
        return self.inputs.start

    def targets(self, per_view: Tensor) -> Tuple[Tensor, Tensor]:
        """Rows of ``per_view`` (2, N, ...) that are the two sources' targets."""
        return self.pairing.targets(per_view)

    def target_index(self, n: int) -> Tuple[Tensor, Tensor]:
        """Indices of the two targets into ``per_view.flatten(0, 1)`` of a batch of ``n``."""
        return self.pairing.target_index(n)


@dataclass
class MixContext:
    """What the step knows about the current batch, offered to mixers."""

    views: List[Tensor]  # the two (normalised) views, (N, 3, H, W) each
    pairing: Pairing
    keys: Tensor  # (2, N, D) target-branch embeddings (no grad)
    negatives: Optional[Tensor]  # (K, D) extra negatives or None (in-batch)
    temperature: float
    embed_target: Callable[[Tensor], Tensor]  # images -> normalised target embedding (grad to input)
    online_prefix: Callable[[Tensor, int], Tensor]  # images -> online trunk maps at a position
    feature_maps: Optional[Tensor] = None  # (2, N, C, h, w) target-branch maps (if requested)
    labels: Optional[Tensor] = None  # (N,) cluster / class labels of the batch, -1 = unknown
    num_classes: int = 0  # number of label values (clusters) when labels are given
    class_weights: Optional[Tensor] = None  # (num_classes,) loss re-weights (ODC, docs/algorithm.md §5.4)
    index: Optional[Tensor] = None  # (N,) dataset indices (in host memory with an ODC memory)
    step: int = 0
    total_steps: int = 1


def derangement(n: int, device: torch.device | str = "cpu") -> Tensor:
    """A uniformly random permutation of ``range(n)`` with no fixed points (n >= 2), by rejection:
    draw permutations until one has no fixed point (1/e of them do, so ~2.7 draws on average). Every
    derangement is equally likely, so partners are swapped both ways (i <-> j) as often as chance."""
    if n < 2:
        raise ValueError("mixing needs a batch of at least 2 samples")
    rows = torch.arange(n)
    perm = torch.randperm(n)
    while bool((perm == rows).any()):
        perm = torch.randperm(n)
    return to_device(perm, device)  # drawn on the host (resumable RNG), copied without a sync


def sample_beta(alpha: float) -> float:
    """One lambda ~ Beta(alpha, alpha), drawn from torch's global CPU RNG (resumable); 1 when alpha <= 0
    (no mixing)."""
    if alpha <= 0:
        return 1.0
    dist = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
    return float(dist.sample())
