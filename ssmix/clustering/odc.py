"""Online deep clustering (ODC) memory: the pseudo-labels of SAMix-C (docs/algorithm.md §5).

The memory holds one L2-normalised feature and one cluster label per training sample, plus the
cluster centroids. It is initialised by k-means (docs/algorithm.md §5.2), then every step the batch's features
replace their rows (feature momentum 1.0) and those samples move to their nearest centroid; every
``centroid_interval`` steps the centroids become the member means again, and every
``small_cluster_interval`` steps small clusters are dissolved and every empty cluster is refilled
by splitting the then-largest cluster (docs/algorithm.md §5.3; between two such steps a cluster may stay
empty). Class weights for the cluster CE follow docs/algorithm.md §5.4.
"""

from __future__ import annotations

import warnings
from typing import Dict, List

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ssmix.clustering.kmeans import kmeans, member_means
from ssmix.config import ODCConfig
from ssmix.distributed import all_gather_nograd, broadcast_from_rank0, is_distributed
from ssmix.transfer import to_device


def _check_config(num_samples: int, dim: int, cfg: ODCConfig) -> None:
    if num_samples < 1 or dim < 1:
        raise ValueError(f"ODCMemory needs num_samples >= 1 and dim >= 1, got {num_samples}, {dim}")
    if not 1 <= cfg.num_clusters <= num_samples:
        raise ValueError(
            f"odc.num_clusters must be between 1 and the number of training samples ({num_samples}), "
            f"got {cfg.num_clusters}; set mix.odc.num_clusters in the config"
        )
    for key in ("centroid_interval", "small_cluster_interval"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"odc.{key} must be >= 1 (steps), got {getattr(cfg, key)}")
    if cfg.min_cluster < 0 or cfg.kmeans_iters < 0 or cfg.reweight_pow < 0:
        raise ValueError(
            "odc.min_cluster, odc.kmeans_iters and odc.reweight_pow must be >= 0, got "
            f"{cfg.min_cluster}, {cfg.kmeans_iters}, {cfg.reweight_pow}"
        )


class ODCMemory(nn.Module):
    """Samples memory (features, labels) and centroids memory of ODC (docs/algorithm.md §5.1).

    Everything is a registered buffer, so the memory is saved and restored with the model's
    ``state_dict``. The buffers stay on ``device`` (CPU by default: ImageNet's 1.3M x 128 bank is
    650 MB) and in float32: ``.to()``, ``.cuda()`` and ``.half()`` on a parent module leave them
    alone; :meth:`update` moves the batch to the memory. Under DDP every rank gathers the whole
    global batch and applies the same deterministic update, so all ranks hold identical memories;
    keep the buffers out of DDP's buffer broadcast with :meth:`ddp_ignored_buffers`.

    ``min_cluster`` is clipped to ``num_samples // num_clusters`` so that the target is reachable.
    """

    def __init__(
        self, num_samples: int, dim: int, cfg: ODCConfig, device: torch.device | str = "cpu"
    ) -> None:
        super().__init__()
        _check_config(num_samples, dim, cfg)
        self.cfg = cfg
        self.num_clusters = cfg.num_clusters
        self.min_cluster = min(cfg.min_cluster, num_samples // cfg.num_clusters)
        if self.min_cluster < cfg.min_cluster:
            warnings.warn(
                f"odc.min_cluster={cfg.min_cluster} is unreachable with {num_samples} samples in "
                f"{cfg.num_clusters} clusters; using {self.min_cluster}"
            )
        self.register_buffer("features", torch.zeros(num_samples, dim, device=device))
        self.register_buffer("labels", torch.zeros(num_samples, dtype=torch.long, device=device))
        self.register_buffer("centroids", torch.zeros(cfg.num_clusters, dim, device=device))
        self.register_buffer("initialized", torch.tensor(False, device=device))

    def _apply(self, fn, recurse: bool = True):  # noqa: D401 - nn.Module hook
        """Device and dtype moves of a parent module do not apply: the memory stays where it is."""
        return self

    def extra_repr(self) -> str:
        n, d = self.features.shape
        return f"num_samples={n}, dim={d}, num_clusters={self.num_clusters}, device={self.features.device}"

    @staticmethod
    def ddp_ignored_buffers(root: nn.Module) -> List[str]:
        """Qualified buffer names of every ODCMemory inside ``root``. Pass them to
        ``DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(root, names)`` before
        wrapping ``root``: the memory keeps ranks in sync itself, and DDP's per-step buffer
        broadcast of a CPU bank would be slow (and rejected by NCCL)."""
        return [
            f"{prefix}.{name}" if prefix else name
            for prefix, module in root.named_modules()
            if isinstance(module, ODCMemory)
            for name, _ in module.named_buffers(recurse=False)
        ]

    # ------------------------------------------------------------------ reading

    def _check_ready(self, what: str) -> None:
        if not bool(self.initialized):
            raise RuntimeError(f"ODCMemory.{what}() before initialize(): cluster the training set first")

    def _check_index(self, index: Tensor) -> Tensor:
        if index.dim() != 1 or index.dtype.is_floating_point:
            raise ValueError(
                f"ODC index must be a 1-D integer tensor of dataset indices, got {index.dtype} "
                f"of shape {tuple(index.shape)}"
            )
        if index.device != self.labels.device or index.dtype != torch.long:
            index = index.to(self.labels.device, torch.long)  # the range check below then reads host memory
        n = self.labels.shape[0]
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
            raise IndexError(
                f"ODC index out of range [0, {n}): the dataset must return its sample index "
                f"and ODCMemory must be built with num_samples=len(dataset)"
            )
        return index

    def labels_of(self, index: Tensor) -> Tensor:
        """Current pseudo-labels of dataset samples ``index`` (read before this step's update,
        docs/algorithm.md §4.2 item 6), in host memory (pass a host ``index``: no device sync)."""
        self._check_ready("labels_of")
        return self.labels[self._check_index(index)]

    def counts(self) -> Tensor:
        """(C,) number of samples per cluster."""
        return torch.bincount(self.labels, minlength=self.num_clusters)

    def class_weights(self) -> Tensor:
        """(C,) loss re-weights w_c = (n_c + 1e-5)^-p / sum_c' (n_c' + 1e-5)^-p (docs/algorithm.md §5.4)."""
        w = (self.counts().double() + 1e-5).pow(-self.cfg.reweight_pow)
        return (w / w.sum()).float()

    def _size_metrics(self, counts: Tensor | None = None) -> Dict[str, float]:
        counts = self.counts() if counts is None else counts
        return {
            "odc_min_cluster": float(counts.min()),
            "odc_max_cluster": float(counts.max()),
            "odc_largest_vs_mean": float(counts.max()) * self.num_clusters / self.labels.shape[0],
        }

    # ------------------------------------------------------------------ writing

    @torch.no_grad()
    def initialize(self, features: Tensor, seed: int = 0) -> Dict[str, float]:
        """k-means the whole training set's features (docs/algorithm.md §5.2): labels, features (normalised) and
        centroids (member means). Under DDP rank 0 clusters and broadcasts its features and labels."""
        expected = tuple(self.features.shape)
        if tuple(features.shape) != expected:
            raise ValueError(
                f"ODCMemory.initialize expects features of shape {expected} "
                f"(num_samples, dim), got {tuple(features.shape)}"
            )
        feats = F.normalize(features.detach().to("cpu", torch.float32), dim=1)
        if not is_distributed() or dist.get_rank() == 0:
            _, labels = kmeans(feats, self.num_clusters, iters=self.cfg.kmeans_iters, seed=seed)
        else:
            labels = torch.zeros(expected[0], dtype=torch.long)
        self.features.copy_(broadcast_from_rank0(feats))
        self.labels.copy_(broadcast_from_rank0(labels))
        self._recompute_centroids()
        self.initialized.fill_(True)
        return self._size_metrics()

    @torch.no_grad()
    def update(self, index: Tensor, features: Tensor, step: int) -> Dict[str, float]:
        """One ODC step (docs/algorithm.md §5.3) with this rank's batch: dataset ``index`` (B,) and momentum-encoder
        projections ``features`` (B, D). ``step`` is the 0-based global step; the periodic updates
        run after every ``centroid_interval`` / ``small_cluster_interval`` steps. Under DDP every
        rank must pass the same B."""
        self._check_ready("update")
        if (
            features.dim() != 2
            or features.shape[1] != self.features.shape[1]
            or index.shape != features.shape[:1]
        ):
            raise ValueError(
                f"ODCMemory.update expects index (B,) and features (B, {self.features.shape[1]}), "
                f"got {tuple(index.shape)} and {tuple(features.shape)}"
            )
        feats = features.detach().float()
        if is_distributed():  # NCCL gathers device tensors; one process keeps the host index as it is
            index = all_gather_nograd(to_device(index.long(), features.device))
            feats = all_gather_nograd(feats)
        index = self._check_index(index)
        feats = F.normalize(feats.to(self.features.device), dim=1)  # device-to-host: the host memory

        old = self.labels[index]
        new = (feats @ self.centroids.T).argmax(1)
        self.features[index] = feats
        self.labels[index] = new

        if (step + 1) % self.cfg.centroid_interval == 0:
            self._recompute_centroids()
        small = refilled = 0
        if (step + 1) % self.cfg.small_cluster_interval == 0:  # as the reference: both at this interval
            small = self._dissolve_small_clusters()
            refilled = self._refill_empty_clusters(step)
        counts = self.counts()
        return {
            "odc_change_ratio": float((new != old).float().mean()),
            "odc_small": float(small),
            "odc_refilled": float(refilled),
            "odc_empty": float((counts == 0).sum()),
            **self._size_metrics(counts),
        }

    def _recompute_centroids(self) -> None:
        """Centroid of every non-empty cluster <- mean of its members' bank features."""
        means, counts = member_means(self.features, self.labels, self.num_clusters)
        nonempty = counts > 0
        self.centroids[nonempty] = means[nonempty]

    def _dissolve_small_clusters(self) -> int:
        """Move the members of clusters below ``min_cluster`` to their nearest non-small centroid;
        returns how many clusters were dissolved (they are refilled by the caller)."""
        small = self.counts() < self.min_cluster  # min_cluster <= N // C, so some cluster is not small
        if not small.any():
            return 0
        members = small[self.labels].nonzero().flatten()
        keep = (~small).nonzero().flatten()
        self.labels[members] = keep[(self.features[members] @ self.centroids[keep].T).argmax(1)]
        return int(small.sum())

    def _refill_empty_clusters(self, step: int) -> int:
        """Give every empty cluster one half of the then-largest cluster (docs/algorithm.md §5.3 step 3-4);
        returns how many clusters were refilled."""
        counts = self.counts()
        empties = (counts == 0).nonzero().flatten().tolist()
        for empty in empties:
            largest = int(counts.argmax())  # >= 2 members: num_samples >= num_clusters
            members = (self.labels == largest).nonzero().flatten()
            leaves = self._split(self.features[members], seed=step * self.num_clusters + empty)
            moved, stay = members[leaves], members[~leaves]
            self.labels[moved] = empty
            counts[empty], counts[largest] = moved.numel(), stay.numel()
            self.centroids[empty] = self.features[moved].mean(0)
            self.centroids[largest] = self.features[stay].mean(0)
        return len(empties)

    def _split(self, x: Tensor, seed: int) -> Tensor:
        """Boolean mask of the half of ``x`` (n >= 2 rows) that leaves its cluster: sklearn 2-means,
        or a seeded random half when 2-means leaves a side below min(min_cluster, n // 2) (or empty)."""
        from sklearn.cluster import KMeans
        from sklearn.exceptions import ConvergenceWarning

        n = x.shape[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            side = KMeans(n_clusters=2, max_iter=20, random_state=0, n_init=1).fit_predict(x.cpu().numpy())
        mask = torch.from_numpy(side == 1).to(x.device)
        moved = int(mask.sum())
        if min(moved, n - moved) >= max(1, min(self.min_cluster, n // 2)):
            return mask
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(x.device)
        mask = torch.zeros(n, dtype=torch.bool, device=x.device)
        mask[order[: n // 2]] = True
        return mask
