"""Time ODC's initial k-means and its per-step update (docs/algorithm.md §5.2, §5.3) on CPU.

    python -m bench.kmeans_speed [--samples 100000] [--dim 128] [--clusters 200] [--batch 256] [--steps 50]

Random L2-normalised features stand in for the extracted embeddings. The per-step figure is the
mean over ``--steps`` updates with the default intervals (50), so it includes one centroid
recomputation and one small-cluster pass.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ssmix.clustering import ODCMemory
from ssmix.config import ODCConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    try:
        import faiss

        faiss.get_num_gpus = lambda: 0  # CPU timing even where faiss sees a GPU
        if args.threads > 0:
            faiss.omp_set_num_threads(args.threads)
        backend = "faiss (CPU)"
    except ImportError:
        backend = "torch fallback"

    g = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(args.samples, args.dim, generator=g), dim=1)
    cfg = ODCConfig(num_clusters=args.clusters)  # kmeans_iters=20, intervals 50, min_cluster 150
    mem = ODCMemory(args.samples, args.dim, cfg)

    t0 = time.perf_counter()
    sizes = mem.initialize(features, seed=0)
    init_s = time.perf_counter() - t0
    print(
        f"initial k-means [{backend}, {torch.get_num_threads()} threads]: {args.samples} x {args.dim} -> "
        f"{args.clusters} clusters, {cfg.kmeans_iters} iters: {init_s:.2f} s  (cluster sizes {sizes})"
    )

    per_step = []
    for step in range(args.steps):
        index = torch.randperm(args.samples, generator=g)[: args.batch]
        batch = torch.randn(args.batch, args.dim, generator=g)
        t0 = time.perf_counter()
        mem.update(index, batch, step)
        mem.class_weights()  # the pipeline reads the re-weights every step (docs/algorithm.md §5.3)
        per_step.append(time.perf_counter() - t0)
    is_periodic = [
        (s + 1) % cfg.centroid_interval == 0 or (s + 1) % cfg.small_cluster_interval == 0
        for s in range(args.steps)
    ]
    periodic = [t for t, p in zip(per_step, is_periodic) if p]
    plain = [t for t, p in zip(per_step, is_periodic) if not p]
    print(
        f"ODC update, batch {args.batch}, mean over {args.steps} steps: {1e3 * sum(per_step) / len(per_step):.2f} ms "
        f"(plain steps {1e3 * sum(plain) / max(len(plain), 1):.2f} ms, "
        f"periodic steps {1e3 * sum(periodic) / max(len(periodic), 1):.2f} ms)"
    )


if __name__ == "__main__":
    main()
