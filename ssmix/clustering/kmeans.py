"""k-means for ODC's initial pseudo-labels (docs/algorithm.md §5.2).

Features are L2-normalised; seeding is k-means++ (ours, torch, seeded); the Lloyd iterations run in
faiss (on this process's own GPU when faiss has GPU support; ``max_points_per_centroid=10**7`` so nothing is
subsampled); labels
are the nearest centroids. The result never leaves a cluster empty. A small pure-torch Lloyd loop
replaces faiss only when faiss cannot be imported.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

_CHUNK = 65536  # rows per block when computing point-to-centroid distances in torch


def _as_features(features: Tensor | np.ndarray, k: int) -> Tensor:
    """Validate and L2-normalise ``features`` into a float32 CPU tensor."""
    x = torch.as_tensor(features).detach()
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"kmeans expects features of shape (N, D) with N, D > 0, got {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"kmeans needs k >= 1 clusters, got k={k}")
    if x.shape[0] < k:
        raise ValueError(
            f"kmeans cannot make {k} non-empty clusters from {x.shape[0]} samples; "
            f"lower the number of clusters (odc.num_clusters) to at most {x.shape[0]}"
        )
    x = x.to("cpu", torch.float32)
    if not torch.isfinite(x).all():
        raise ValueError("kmeans features contain NaN or Inf; check the feature extractor")
    return F.normalize(x, dim=1).contiguous()


def _kmeanspp_seeds(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each new seed is a point drawn with
    probability proportional to its squared distance to the nearest seed so far. ``x`` is
    L2-normalised, so ``|x - c|^2 = 2 - 2 <x, c>`` for a seed ``c`` taken from ``x``. Runs on the
    GPU when torch sees one (k sequential passes over the data); draws come from ``generator``."""
    n = x.shape[0]
    points = x.to("cuda") if torch.cuda.is_available() else x
    picks = [int(torch.randint(n, (1,), generator=generator))]
    closest = (2 - 2 * (points @ points[picks[0]])).clamp_min_(0)
    for _ in range(1, k):
        cdf = closest.cumsum(0, dtype=torch.float64)
        total = float(cdf[-1])
        if total > 0:
            u = torch.rand(1, generator=generator, dtype=torch.float64).to(cdf.device) * total
            pick = min(int(torch.searchsorted(cdf, u, right=True)), n - 1)
        else:  # fewer distinct points than k: every point already coincides with a seed
            pick = int(torch.randint(n, (1,), generator=generator))
        picks.append(pick)
        closest = torch.minimum(closest, (2 - 2 * (points @ points[pick])).clamp_min_(0))
    return x[torch.tensor(picks)]


def _nearest(x: Tensor, centroids: Tensor) -> Tensor:
    """Index of the nearest centroid (L2) for each row of ``x``, in row blocks."""
    sq_norms = (centroids * centroids).sum(1)
    out = [(sq_norms - 2 * (block @ centroids.T)).argmin(1) for block in x.split(_CHUNK)]
    return torch.cat(out)


def member_means(x: Tensor, labels: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """(k, D) mean of each cluster's members (zero rows for empty clusters) and (k,) counts."""
    counts = torch.bincount(labels, minlength=k)
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, labels, x)
    return sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype), counts


def _lloyd_torch(x: Tensor, seeds: Tensor, iters: int) -> Tensor:
    """Plain Lloyd iterations; an emptied cluster keeps its previous centroid."""
    centroids = seeds.clone()
    for _ in range(iters):
        means, counts = member_means(x, _nearest(x, centroids), centroids.shape[0])
        centroids = torch.where((counts > 0).unsqueeze(1), means, centroids)
    return centroids


_GPU_RESOURCES: dict = {}  # one faiss StandardGpuResources per device, kept for the process


def faiss_flat_index(faiss, d: int):
    """An exact L2 index on this process's GPU (torch's current device, which the trainer binds to the
    rank's own) when faiss has GPU support and CUDA is up, else on the CPU. (``faiss.Kmeans(gpu=True)``
    spreads over every GPU of the node, ``index_cpu_to_all_gpus``: contexts and memory on the other
    ranks' devices.)"""
    if getattr(faiss, "get_num_gpus", lambda: 0)() > 0 and torch.cuda.is_available():
        device = torch.cuda.current_device()
        if device not in _GPU_RESOURCES:
            _GPU_RESOURCES[device] = faiss.StandardGpuResources()
        config = faiss.GpuIndexFlatConfig()
        config.device = device
        return faiss.GpuIndexFlatL2(_GPU_RESOURCES[device], d, config)
    return faiss.IndexFlatL2(d)


def _lloyd_faiss(faiss, x: Tensor, seeds: Tensor, iters: int, seed: int) -> Tensor:
    """faiss Lloyd iterations from ``seeds`` (``faiss.Clustering``, as ``faiss.Kmeans`` runs it); returns
    faiss's nearest-centroid labels. ``min_points_per_centroid`` only sets when faiss prints its raw
    "provide at least N training points" warning: 1 silences it."""
    k, d = seeds.shape
    clustering = faiss.Clustering(d, k)
    clustering.niter, clustering.seed, clustering.verbose = iters, seed, False
    clustering.max_points_per_centroid = 10**7
    clustering.min_points_per_centroid = 1
    faiss.copy_array_to_vector(
        np.ascontiguousarray(seeds.numpy(), dtype=np.float32).ravel(), clustering.centroids
    )
    points = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    index = faiss_flat_index(faiss, d)
    clustering.train(points, index)  # leaves the final centroids in the index
    _, nearest = index.search(points, 1)
    return torch.from_numpy(nearest[:, 0].astype(np.int64))


def _fill_empty_clusters(x: Tensor, labels: Tensor, k: int) -> Tensor:
    """Make every one of ``k`` clusters non-empty (needs ``len(x) >= k``), deterministically.

    For each empty cluster in id order, the member of the currently largest cluster farthest from
    that cluster's mean moves into it. Returns the new labels (a copy).
    """
    labels = labels.clone()
    centroids, counts = member_means(x, labels, k)
    for empty in (counts == 0).nonzero().flatten().tolist():
        largest = int(counts.argmax())  # >= 2 members, since len(x) >= k and a cluster is empty
        members = (labels == largest).nonzero().flatten()
        far = members[((x[members] - centroids[largest]) ** 2).sum(1).argmax()]
        labels[far] = empty
        counts[largest] -= 1
        counts[empty] = 1
        centroids[empty] = x[far]
        centroids[largest] = (centroids[largest] * (counts[largest] + 1) - x[far]) / counts[largest]
    return labels


def kmeans(features: Tensor | np.ndarray, k: int, iters: int = 20, seed: int = 0) -> Tuple[Tensor, Tensor]:
    """Cluster the L2-normalised rows of ``features`` (N, D) into ``k`` non-empty clusters.

    Returns ``(centroids (k, D) float32, labels (N,) long)``, both on CPU; centroids are the member
    means of the normalised features (not re-normalised, docs/algorithm.md §5.1). Deterministic for a given
    ``seed`` on a given machine.
    """
    x = _as_features(features, k)
    if iters < 0:
        raise ValueError(f"kmeans iters must be >= 0, got {iters}")
    seeds = _kmeanspp_seeds(x, k, torch.Generator().manual_seed(seed))
    try:
        import faiss
    except ImportError:
        labels = _nearest(x, _lloyd_torch(x, seeds, iters))
    else:
        labels = _lloyd_faiss(faiss, x, seeds, iters, seed)
    labels = _fill_empty_clusters(x, labels, k)
    centroids, _ = member_means(x, labels, k)
    return centroids, labels
