"""k-means and the ODC memory (docs/algorithm.md §5)."""

from __future__ import annotations

import io
import sys
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from sklearn.metrics import adjusted_rand_score

from ssmix.clustering import ODCMemory, kmeans
from ssmix.clustering.kmeans import _fill_empty_clusters
from ssmix.config import ODCConfig

N_PER, C, D = 50, 6, 16
N = N_PER * C


def blobs(noise: float = 0.01, seed: int = 0):
    """C tight Gaussian blobs around orthogonal unit directions, N_PER points each."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(C).repeat_interleave(N_PER)
    return torch.eye(D)[:C][y] + noise * torch.randn(N, D, generator=g), y


def odc_cfg(**kw) -> ODCConfig:
    base = dict(
        num_clusters=C,
        min_cluster=20,
        centroid_interval=1000,
        small_cluster_interval=1000,
        reweight_pow=0.5,
        kmeans_iters=20,
    )
    return ODCConfig(**{**base, **kw})


def ready_memory(**kw) -> ODCMemory:
    mem = ODCMemory(N, D, odc_cfg(**kw))
    mem.initialize(blobs()[0])
    return mem


def hand_means(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.stack([features[labels == c].mean(0) for c in range(C)])


@pytest.fixture(params=["faiss", "torch"])
def backend(request, monkeypatch):
    if request.param == "torch":
        monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    else:
        pytest.importorskip("faiss", reason="faiss is an extra: pip install -e '.[cpu]' or '.[gpu]'")
    return request.param


# ---------------------------------------------------------------------------------------- kmeans


def test_kmeans_recovers_blobs(backend):
    x, y = blobs()
    centroids, labels = kmeans(x.numpy(), C, iters=20, seed=0)
    assert centroids.shape == (C, D) and centroids.dtype == torch.float32
    assert labels.shape == (N,) and labels.dtype == torch.long
    assert adjusted_rand_score(y.numpy(), labels.numpy()) == 1.0
    assert torch.allclose(centroids, hand_means(F.normalize(x, dim=1), labels), atol=1e-6)


def test_kmeans_leaves_no_cluster_empty_with_duplicates(backend):
    distinct = F.normalize(torch.randn(10, D, generator=torch.Generator().manual_seed(1)), dim=1)
    x = distinct.repeat(3, 1)  # 30 points, 10 distinct, 20 clusters
    centroids, labels = kmeans(x, 20, iters=10, seed=0)
    assert torch.bincount(labels, minlength=20).min() >= 1
    assert torch.allclose(centroids[labels], x, atol=1e-6)  # every cluster holds copies of one point
    _, labels = kmeans(torch.ones(8, 4), 8)  # all points identical, k = N
    assert torch.equal(torch.bincount(labels, minlength=8), torch.ones(8, dtype=torch.long))


def test_fill_empty_clusters_moves_farthest_point_of_largest_cluster():
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0], [20.0], [21.0]])
    labels = torch.tensor([0, 0, 0, 0, 2, 2])  # cluster 1 empty; cluster 0 largest, mean 3.25
    out = _fill_empty_clusters(x, labels, 3)
    assert out.tolist() == [0, 0, 0, 1, 2, 2]  # the 10 is farthest from 3.25
    assert labels.tolist() == [0, 0, 0, 0, 2, 2]  # input untouched


def test_kmeans_rejects_bad_input():
    with pytest.raises(ValueError, match="num_clusters"):
        kmeans(torch.randn(5, 3), 6)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        kmeans(torch.randn(5), 2)
    with pytest.raises(ValueError, match="NaN"):
        kmeans(torch.full((5, 3), float("nan")), 2)


# ---------------------------------------------------------------------------------------- ODC


def test_initialize_clusters_the_blobs():
    mem = ready_memory()
    x, y = blobs()
    assert bool(mem.initialized)
    assert mem.counts().min() >= 1
    assert adjusted_rand_score(y.numpy(), mem.labels.numpy()) == 1.0
    assert torch.allclose(mem.features, F.normalize(x, dim=1))
    assert torch.allclose(mem.centroids, hand_means(mem.features, mem.labels), atol=1e-6)


def test_update_reassigns_moved_sample_and_replaces_its_feature():
    mem = ready_memory()
    a, b = int(mem.labels[0]), int(mem.labels[N_PER])
    index = torch.tensor([0, 1, 2])
    new_feats = torch.stack([3 * mem.centroids[b], mem.features[1], mem.features[2]])
    before = mem.labels_of(index)
    assert before.tolist() == [a, a, a]
    metrics = mem.update(index, new_feats, step=0)
    assert mem.labels_of(index).tolist() == [b, a, a]
    assert metrics["odc_change_ratio"] == pytest.approx(1 / 3)
    assert torch.allclose(mem.features[0], F.normalize(mem.centroids[b], dim=0))  # momentum 1, normalised


def test_centroids_become_member_means_on_interval():
    mem = ready_memory(centroid_interval=2)
    b = int(mem.labels[N_PER])
    start = mem.centroids.clone()
    mem.update(torch.arange(10), mem.centroids[b].expand(10, D), step=0)
    assert torch.equal(mem.centroids, start)  # not a centroid step
    mem.update(torch.tensor([N - 1]), mem.features[N - 1 :], step=1)
    assert torch.allclose(mem.centroids, hand_means(mem.features, mem.labels), atol=1e-6)
    assert not torch.allclose(mem.centroids, start)


def test_small_cluster_is_dissolved_and_refilled_from_largest():
    mem = ready_memory(small_cluster_interval=2, min_cluster=20)
    a, b = int(mem.labels[0]), int(mem.labels[N_PER])
    members_a = (mem.labels == a).nonzero().flatten()
    m0 = mem.update(members_a[:45], mem.centroids[b].expand(45, D), step=0)
    assert m0["odc_small"] == 0 and int(mem.counts()[a]) == 5
    largest_members = (mem.labels == b).nonzero().flatten()  # 95 samples, the largest cluster
    m1 = mem.update(torch.tensor([N - 1]), mem.features[N - 1 :], step=1)
    counts = mem.counts()
    assert m1["odc_small"] == 1
    assert counts.min() >= 20 and m1["odc_min_cluster"] >= 20 and counts.sum() == N
    refill = (mem.labels == a).nonzero().flatten()
    assert torch.isin(refill, largest_members).all()  # a was refilled by splitting b
    assert torch.allclose(mem.centroids[a], mem.features[refill].mean(0), atol=1e-6)
    assert torch.allclose(mem.centroids[b], mem.features[mem.labels == b].mean(0), atol=1e-6)


def test_emptied_cluster_waits_for_the_small_cluster_interval_then_is_refilled():
    mem = ready_memory(min_cluster=0, small_cluster_interval=3)  # refills at steps 2, 5, ... (0-based)
    a, b = int(mem.labels[0]), int(mem.labels[N_PER])
    members_a = (mem.labels == a).nonzero().flatten()
    metrics = mem.update(members_a, mem.centroids[b].expand(N_PER, D), step=0)
    assert metrics["odc_empty"] == 1 and metrics["odc_refilled"] == 0  # as the reference: not yet
    assert int(mem.counts()[a]) == 0
    assert metrics["odc_largest_vs_mean"] == pytest.approx(int(mem.counts().max()) / (N / C))
    metrics = mem.update(torch.tensor([N - 1]), mem.features[N - 1 :], step=1)
    assert metrics["odc_empty"] == 1
    metrics = mem.update(torch.tensor([N - 1]), mem.features[N - 1 :], step=2)
    assert metrics["odc_refilled"] == 1 and metrics["odc_empty"] == 0
    assert mem.counts().min() >= 1


def test_split_falls_back_to_seeded_random_halves():
    mem = ODCMemory(N, D, odc_cfg(min_cluster=3))
    identical = torch.ones(10, 4)
    mask = mem._split(identical, seed=7)  # 2-means finds one side empty
    assert int(mask.sum()) == 5 and torch.equal(mask, mem._split(identical, seed=7))
    outlier = torch.cat([torch.ones(9, 4), -torch.ones(1, 4)])
    assert int(mem._split(outlier, seed=0).sum()) == 5  # 1 vs 9 is below min_cluster=3
    mem.min_cluster = 1
    assert int(mem._split(outlier, seed=0).sum()) in (1, 9)  # 2-means split kept


def test_class_weights_formula():
    mem = ready_memory()
    counts = [100, 50, 50, 40, 40, 20]
    mem.labels.copy_(torch.arange(C).repeat_interleave(torch.tensor(counts)))
    raw = [(n + 1e-5) ** -0.5 for n in counts]
    expected = torch.tensor([r / sum(raw) for r in raw])
    assert torch.allclose(mem.class_weights(), expected, atol=1e-7)
    mem.cfg.reweight_pow = 0.0
    assert torch.allclose(mem.class_weights(), torch.full((C,), 1 / C))


def _steps(mem: ODCMemory, start: int, n: int) -> None:
    g = torch.Generator().manual_seed(start)
    for step in range(start, start + n):
        index = torch.randperm(N, generator=g)[:32]
        targets = mem.centroids[torch.randint(C, (32,), generator=g)]
        mem.update(index, targets + 0.3 * torch.randn(32, D, generator=g), step)


def test_state_dict_round_trip_resumes_exactly():
    cfg = dict(centroid_interval=2, small_cluster_interval=3)
    mem = ready_memory(**cfg)
    _steps(mem, 0, 4)
    buf = io.BytesIO()
    torch.save(mem.state_dict(), buf)
    buf.seek(0)
    fresh = ODCMemory(N, D, odc_cfg(**cfg))
    fresh.load_state_dict(torch.load(buf))
    assert bool(fresh.initialized) and torch.equal(fresh.labels, mem.labels)
    _steps(mem, 4, 6)
    _steps(fresh, 4, 6)
    for name, value in mem.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[name]), name


def test_memory_ignores_parent_casts_and_moves():
    mem = ODCMemory(N, D, odc_cfg())
    parent = nn.Sequential(nn.Linear(2, 2), mem).to(torch.float64)
    assert mem.features.dtype == torch.float32 and parent[0].weight.dtype == torch.float64
    assert ODCMemory.ddp_ignored_buffers(parent) == ["1.features", "1.labels", "1.centroids", "1.initialized"]


def test_odc_bad_input_errors():
    mem = ODCMemory(N, D, odc_cfg())
    with pytest.raises(RuntimeError, match="initialize"):
        mem.update(torch.arange(2), torch.randn(2, D), 0)
    with pytest.raises(ValueError, match="shape"):
        mem.initialize(torch.randn(N, D + 1))
    mem.initialize(blobs()[0])
    with pytest.raises(IndexError, match="num_samples"):
        mem.labels_of(torch.tensor([N]))
    with pytest.raises(ValueError, match="num_clusters"):
        ODCMemory(4, D, odc_cfg())
    with pytest.warns(UserWarning, match="min_cluster"):
        assert ODCMemory(30, D, odc_cfg()).min_cluster == 5


# ---------------------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, world: int, tmp: str, x: torch.Tensor, batches: list) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        torch.set_num_threads(1)
        mem = ODCMemory(N, D, odc_cfg(centroid_interval=2, small_cluster_interval=2))
        mem.initialize(x if rank == 0 else torch.randn_like(x))  # rank 0's clustering wins
        for step, (index, feats) in enumerate(batches):
            half = index.shape[0] // world
            rows = slice(rank * half, (rank + 1) * half)
            mem.update(index[rows], feats[rows], step)
        torch.save(mem.state_dict(), f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_keep_identical_memories(tmp_path):
    x = blobs()[0]
    ref = ODCMemory(N, D, odc_cfg(centroid_interval=2, small_cluster_interval=2))
    ref.initialize(x)
    a, b = int(ref.labels[0]), int(ref.labels[N_PER])
    members_a = (ref.labels == a).nonzero().flatten()
    batches = [  # shrink cluster a (handled at step 1), then random moves
        (members_a[:44], ref.centroids[b].expand(44, D).clone()),
        (torch.arange(N - 8, N), torch.randn(8, D, generator=torch.Generator().manual_seed(0))),
        (torch.arange(8), torch.randn(8, D, generator=torch.Generator().manual_seed(1))),
    ]
    mp.spawn(_ddp_worker, args=(2, str(tmp_path), x, batches), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for step, (index, feats) in enumerate(batches):
        ref.update(index, feats, step)
    assert int(ref.counts().min()) >= 20  # the shrunk cluster was handled
    for name, value in states[0].items():
        assert torch.equal(value, states[1][name]), name  # ranks agree bit for bit
        assert torch.allclose(value.float(), ref.state_dict()[name].float(), atol=1e-6), name  # = one process
