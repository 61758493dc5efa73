"""Issue 21 on CPU: what a first ``torchrun`` on a GPU node meets, with the CUDA and process-group calls
replaced by spies (no GPU needed): the device bound before any collective, the batch convention, the
checks that need the world size, resuming on another world size."""

from __future__ import annotations

import importlib
import sys
from typing import List

import pytest
import torch
import torch.distributed as dist

from ssmix.config import ConfigError
from ssmix.engine import trainer
from tests.helpers import moco_overrides, tiny_config


class _Stop(Exception):
    """Raised by a spy to end ``train`` once the calls under test have happened."""


def _fake_cuda(monkeypatch, calls: List[tuple], count: int = 2) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("set_device", int(i))))


def _fake_launch(monkeypatch, calls: List[tuple], rank: int, world: int) -> None:
    """The environment torchrun sets, and a process group that only records its start."""
    for key, value in {"WORLD_SIZE": world, "RANK": rank, "LOCAL_RANK": rank}.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(
        dist,
        "init_process_group",
        lambda **kw: calls.append(("init_process_group", kw["backend"], kw.get("device_id"))),
    )
    monkeypatch.setattr(dist, "get_rank", lambda: rank)
    monkeypatch.setattr(dist, "get_world_size", lambda: world)


def _stop_at_run_dir(monkeypatch, calls: List[tuple]) -> None:
    def open_run_dir(*args, **kwargs):  # the first collective of a run (it broadcasts rank 0's verdict)
        calls.append(("open_run_dir",))
        raise _Stop

    monkeypatch.setattr(trainer, "open_run_dir", open_run_dir)


# -- 1. the device is bound before the process group and before anything broadcasts -----------------------
def test_each_rank_binds_its_gpu_before_the_process_group_and_the_first_broadcast(monkeypatch, tmp_path):
    calls: List[tuple] = []
    _fake_cuda(monkeypatch, calls)
    _fake_launch(monkeypatch, calls, rank=1, world=2)
    _stop_at_run_dir(monkeypatch, calls)
    with pytest.raises(_Stop):
        trainer.train(tiny_config(*moco_overrides(), "device=cuda", f"output_dir={tmp_path}"))
    nccl = calls[1]
    assert calls[0] == ("set_device", 1) and nccl[:2] == ("init_process_group", "nccl")
    assert nccl[2] in (None, torch.device("cuda:1")) and calls[2:] == [("open_run_dir",)]


def test_an_explicit_gpu_is_bound_on_one_process(monkeypatch, tmp_path):
    calls: List[tuple] = []
    _fake_cuda(monkeypatch, calls)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    _stop_at_run_dir(monkeypatch, calls)
    with pytest.raises(_Stop):
        trainer.train(tiny_config(*moco_overrides(), "device=cuda:1", f"output_dir={tmp_path}"))
    assert calls == [("set_device", 1), ("open_run_dir",)]


@pytest.mark.parametrize(
    "device, rank, count, message",
    [
        (
            "cuda:0",
            1,
            2,
            r"^device: 'cuda:0' with 2 processes would put every rank on that GPU; use device=cuda",
        ),
        ("cuda", 1, 1, r"^LOCAL_RANK=1: only 1 GPU\(s\) visible; start at most 1 process\(es\) per node"),
    ],
)
def test_a_device_that_two_ranks_would_share_is_refused_in_one_line(
    monkeypatch, tmp_path, device, rank, count, message
):
    calls: List[tuple] = []
    _fake_cuda(monkeypatch, calls, count)
    _fake_launch(monkeypatch, calls, rank=rank, world=2)
    _stop_at_run_dir(monkeypatch, calls)
    with pytest.raises(ConfigError, match=message):
        trainer.train(tiny_config(*moco_overrides(), f"device={device}", f"output_dir={tmp_path}"))
    assert calls == []  # refused before the group starts


# -- 2. the GPU benchmark's torch + lightly reference step under channels_last ------------------------------
def test_the_gpu_benchmarks_lightly_reference_step_runs_in_channels_last(monkeypatch):
    """``bench/gpu_throughput.py`` builds its reference with lightly's SplitBatchNorm in channels_last (as on
    CUDA); lightly's ``view`` raised "view size is not compatible" on that layout. CPU shows it too."""
    import os
    import sys
    from types import SimpleNamespace

    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench"))
    from pretrain_throughput import reference_step

    args = SimpleNamespace(arch="resnet18", bn_splits=4, temperature=0.2, queue=32)
    step = reference_step(args, 3, device="cpu", amp=None, memory_format=torch.channels_last)
    views = [torch.randn(16, 3, 16, 16) for _ in range(2)]
    losses = [float(step(views, i)) for i in range(2)]
    assert all(0 < loss < 20 for loss in losses) and "pretrain_throughput" in sys.modules


# -- 3. the batch convention and the learning-rate rule -------------------------------------------------
def _imagenet(name: str, *overrides: str):
    import os

    from ssmix.config import load_config

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return load_config(os.path.join(root, "configs", "imagenet", f"{name}.yaml"), list(overrides))


def _encoder_lr(cfg, world: int) -> float:
    from ssmix.engine.optim import build_optimizer

    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = build_optimizer([{"name": "encoder", "params": params}], cfg, steps_per_ep=10, world=world)
    return optimizer.param_groups[0]["base_lr"]


@pytest.mark.parametrize("name, lr", [("simclr", 0.3 * 4096 / 256), ("byol", 0.2 * 4096 / 256)])
def test_imagenet_simclr_and_byol_give_a_global_batch_that_fits_and_the_papers_lr(name, lr):
    from ssmix.config import per_process_batch

    cfg = _imagenet(name)
    assert cfg.train.batch_size is None and cfg.train.global_batch_size == 4096
    assert [per_process_batch(cfg.train, w) for w in (8, 16, 32)] == [512, 256, 128]
    for world in (8, 16):  # the lr follows the global batch, not the world size
        assert _encoder_lr(cfg, world) == pytest.approx(lr)
    half = _imagenet(name, "train.global_batch_size=2048")
    assert _encoder_lr(half, 8) == pytest.approx(lr / 2)  # the linear rule (SimCLR sec. B.1, BYOL sec. 3.3)
    with pytest.raises(
        ConfigError,
        match=r"^train.global_batch_size=4096 does not divide over 3 processes: "
        r"use a multiple of 3",
    ):
        per_process_batch(cfg.train, 3)


def test_a_per_process_batch_scales_the_lr_with_the_world_size_and_both_keys_are_refused():
    cfg = tiny_config("train.lr=0.3", "train.lr_reference_batch=256", "train.batch_size=64")
    assert _encoder_lr(cfg, 8) == pytest.approx(0.3 * 64 * 8 / 256)
    assert _encoder_lr(tiny_config("train.lr=0.3"), 8) == 0.3  # no rule given: train.lr as it is
    with pytest.raises(
        ConfigError,
        match=r"^train.global_batch_size=64 and train.batch_size=8 are both set: "
        r"set train.batch_size=null",
    ):
        tiny_config("train.global_batch_size=64")
    with pytest.raises(ConfigError, match=r"^train.batch_size: null needs train.global_batch_size"):
        tiny_config("train.batch_size=null")


def test_simsiams_constant_predictor_lr_follows_the_rule_too():
    from ssmix.engine.optim import build_optimizer, set_learning_rates
    from ssmix.methods import build_method

    cfg = tiny_config(
        "method.name=simsiam", "data.aug.kind=simsiam", "train.lr=0.05", "train.lr_reference_batch=256"
    )
    for world in (1, 4):  # 8 images per process
        optimizer = build_optimizer(build_method(cfg).param_groups(), cfg, steps_per_ep=10, world=world)
        predictor = next(g for g in optimizer.param_groups if g["name"] == "predictor")
        for step in (0, 50, 99):
            set_learning_rates(optimizer, step, 100)
            assert predictor["lr"] == pytest.approx(0.05 * 8 * world / 256)


# -- 4. what the global batch must divide, checked at start with the world size known -----------------------
def test_swavs_queue_against_the_global_batch_is_checked_before_the_run_starts(monkeypatch, tmp_path):
    from ssmix.engine.trainer import check_global_batch

    cfg = _imagenet("swav")  # global batch 256: the queue of 3840 holds 15
    for world in (1, 2, 4, 8):
        check_global_batch(cfg, 256 // world, world)
    calls: List[tuple] = []
    _fake_launch(monkeypatch, calls, rank=0, world=2)
    _stop_at_run_dir(monkeypatch, calls)
    swav = tiny_config(
        "method.name=swav", "data.aug.kind=swav", "method.queue_size=24", f"output_dir={tmp_path}"
    )
    with pytest.raises(
        ConfigError,
        match=r"^method.queue_size=24 is not a multiple of the global batch 16 "
        r"\(8 per process x 2\): use a multiple of 16",
    ):
        trainer.train(swav)
    assert ("open_run_dir",) not in calls  # refused before the run directory, the data and the model
    with pytest.raises(ConfigError, match=r"^method.bn_splits=3 does not divide the batch 8"):
        check_global_batch(tiny_config("method.name=mocov2", "method.bn_splits=3"), 8, 1)


# -- 5. resuming on another number of processes ------------------------------------------------------------
def _as_if_written_by_two_ddp_ranks(path: str) -> None:
    """Rewrite a one-process MoCo checkpoint as two DDP ranks write it: plain-BN statistics (C, not
    C x bn_splits), one RNG state per rank, world_size 2."""
    from ssmix.engine import checkpoint as ckpt
    from ssmix.models.backbones import fold_split_bn_stats

    state = ckpt.load_checkpoint(path)
    state["model"] = fold_split_bn_stats(state["model"])
    state["rng"], state["world_size"] = [state["rng"], state["rng"]], 2
    ckpt.save_atomic(state, path)


def test_a_ddp_moco_checkpoint_resumes_on_one_process_with_the_same_global_batch(tmp_path, capsys):
    from ssmix.engine import checkpoint as ckpt
    from tests.helpers import moco_overrides

    moco = [*moco_overrides(), "train.batch_size=null", "train.global_batch_size=8", f"output_dir={tmp_path}"]
    trainer.train(tiny_config(*moco, "train.max_steps=2"))
    saved = ckpt.load_checkpoint(ckpt.latest_checkpoint(str(tmp_path)))
    assert saved["world_size"] == 1 and saved["model"]["method.backbone.bn1.running_mean"].numel() == 64 * 2
    _as_if_written_by_two_ddp_ranks(ckpt.latest_checkpoint(str(tmp_path)))
    summary = trainer.train(tiny_config(*moco, "train.max_steps=4", "resume=auto"))
    err = capsys.readouterr().err
    assert summary["step"] == 4
    assert "BatchNorm statistics converted between MoCo's split-BN of one process" in err
    assert "was written by 2 process(es), this run has 1: same global batch and 4 steps per epoch" in err
    after = ckpt.load_checkpoint(ckpt.latest_checkpoint(str(tmp_path)))["model"]
    after = after["method.backbone.bn1.running_mean"]
    assert after.numel() == 64 * 2 and torch.isfinite(after).all()


def test_a_resume_that_changes_the_steps_per_epoch_is_refused_in_one_line(tmp_path):
    from ssmix.engine import checkpoint as ckpt
    from tests.helpers import moco_overrides

    moco = [*moco_overrides(), f"output_dir={tmp_path}"]  # train.batch_size=8 per process
    trainer.train(tiny_config(*moco, "train.max_steps=2"))
    _as_if_written_by_two_ddp_ranks(ckpt.latest_checkpoint(str(tmp_path)))
    refusal = (
        r"^resume: \S+ was written by 2 process\(es\) at 2 steps per epoch; with 1 this config has 4 "
        r"\(train.batch_size is per process\): resume with 2, or start a new run with "
        r"train.global_batch_size"
    )
    with pytest.raises(ckpt.CheckpointError, match=refusal):
        trainer.train(tiny_config(*moco, "train.max_steps=4", "resume=auto"))


def test_rng_states_of_another_world_size_restore_what_this_process_has(monkeypatch):
    from ssmix.engine import checkpoint as ckpt

    state = ckpt.get_rng_state()
    assert ckpt.rank_rng_state([state, state], 1) is state and ckpt.rank_rng_state([state], 1) is None
    assert ckpt.rank_rng_state(state, 0) is state and ckpt.rank_rng_state(state, 3) is None
    restored: List[int] = []

    def set_rng_state(new_state, device="cuda"):  # what torch does for a GPU it does not see
        index = device if isinstance(device, int) else 0
        if index >= 1:
            raise RuntimeError(f"Invalid device index {index}")
        restored.append(index)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_rng_state)
    eight_gpus = {**state, "cuda": [torch.zeros(16, dtype=torch.uint8)] * 8}  # an older 8-GPU checkpoint
    ckpt.set_rng_state(eight_gpus)
    assert restored == [0]


# -- likely items: fp32 losses under autocast, SimCLR's NT-Xent without boolean indexing --------------------
def test_contrastive_losses_compute_in_fp32_inside_a_bf16_autocast_region():
    """``.float()`` does not leave autocast: the matmuls of the logits ran in bf16 again (an error of ~1e-3
    on these logits); with autocast off inside the losses they equal the fp32 values."""
    import torch.nn.functional as F

    from ssmix.losses import contrastive as C

    torch.manual_seed(0)
    z, a, b = (F.normalize(torch.randn(8, 32), dim=1) for _ in range(3))
    negatives, lam = F.normalize(torch.randn(64, 32), dim=1), torch.rand(8)
    cand, ia, ib = F.normalize(torch.randn(16, 32), dim=1), torch.arange(8), torch.arange(8, 16)
    calls = {
        "info_nce": lambda: C.info_nce(z, a, negatives, 0.2),
        "mixup_info_nce": lambda: C.mixup_info_nce(z, a, b, lam, negatives, 0.2),
        "in_batch": lambda: C.mixup_info_nce_in_batch(z, cand, ia, ib, lam, 0.2),
        "soft_ce": lambda: C.soft_target_cross_entropy(z, cand, ia, ib, lam, 0.2),
        "bce": lambda: C.two_source_bce(z, a, b, lam, 0.2),
        "nt_xent": lambda: C.nt_xent(z, a, 0.1),
    }
    for name, loss in calls.items():
        fp32 = loss()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = loss()
        assert mixed.dtype == torch.float32 and torch.equal(mixed, fp32), name


def test_nt_xent_equals_lightlys_loss_and_gradient():
    from lightly.loss import NTXentLoss

    from ssmix.losses.contrastive import nt_xent

    torch.manual_seed(0)
    z0, z1 = torch.randn(16, 32, requires_grad=True), torch.randn(16, 32, requires_grad=True)
    ours, ref = nt_xent(z0, z1, 0.1), NTXentLoss(temperature=0.1)(z0, z1)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    for mine, theirs in zip(torch.autograd.grad(ours, (z0, z1)), torch.autograd.grad(ref, (z0, z1))):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-7)


def test_lars_without_host_reads_steps_exactly_as_lightlys():
    from lightly.utils.lars import LARS as LightlyLARS

    from ssmix.engine.optim import LARS

    torch.manual_seed(0)
    ours = [torch.nn.Parameter(t) for t in (torch.randn(10, 5), torch.zeros(5), torch.randn(3))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    kw = dict(lr=0.5, momentum=0.9, weight_decay=1e-4)
    opts = [
        cls([{"params": ps[:2]}, {"params": ps[2:], "weight_decay": 0.0}], **kw)
        for cls, ps in ((LARS, ours), (LightlyLARS, theirs))
    ]
    for step in range(4):
        grads = [torch.randn_like(p) * (step > 0 or i != 1) for i, p in enumerate(ours)]  # a zero norm first
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        for opt in opts:
            opt.step()
    assert all(torch.equal(p, q) for p, q in zip(ours, theirs))


def test_items_loaded_in_the_main_process_leave_the_cuda_generators_alone(monkeypatch):
    """With ``data.num_workers=0`` every item reseeded torch's RNG with ``torch.manual_seed``, which reseeds
    every CUDA generator too: the training loop's own CUDA stream (e.g. the shuffle-BN permutation drawn on
    the GPU) restarted at each item's seed. Now only the CPU generator is seeded, inside ``fork_rng``."""
    from ssmix.config import AugConfig
    from ssmix.data.datasets import build_dataset, dataset_info
    from ssmix.data.loader import MultiViewDataset
    from ssmix.data.transforms import build_view_transform

    seeded: List[int] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: seeded.append(seed))
    info = dataset_info("synthetic")
    data = MultiViewDataset(
        build_dataset("synthetic", "", "train", image_size=16, num_samples=4),
        build_view_transform(AugConfig(), 16, info.mean, info.std),
        seed=0,
    )
    torch.manual_seed(123)
    seeded.clear()
    before = torch.get_rng_state()
    first = data[1][0][0]
    assert seeded == [] and torch.equal(torch.get_rng_state(), before)  # no CUDA reseed; CPU stream intact
    assert torch.equal(data[1][0][0], first)  # the item's augmentation is still a function of its seed


# -- likely items: faiss on the rank's own GPU ----------------------------------------------------------------
def _blobs(n: int = 2000, k: int = 8):
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(k, 16, generator=g) * 6
    return centres[torch.arange(n) % k] + torch.randn(n, 16, generator=g)


def test_faiss_kmeans_clusters_on_this_processs_own_gpu_only(monkeypatch):
    """With faiss-gpu, ``faiss.Kmeans(gpu=True)`` went to ``index_cpu_to_all_gpus``: every rank put a context
    on every GPU of the node. The index is now built on torch's current device (the rank's): a stand-in
    faiss records where, backed by the CPU index."""
    faiss = pytest.importorskip("faiss")
    import types

    km = importlib.import_module("ssmix.clustering.kmeans")  # the package exports the function as kmeans

    x = km._as_features(_blobs(), 8)
    seeds = km._kmeanspp_seeds(x, 8, torch.Generator().manual_seed(0))
    reference = km._lloyd_faiss(faiss, x, seeds, 10, 0)
    devices: List[int] = []

    def all_gpus(*args, **kwargs):
        raise AssertionError("index_cpu_to_all_gpus: every GPU of the node")

    fake = types.SimpleNamespace(
        **{
            name: getattr(faiss, name)
            for name in ("Clustering", "IndexFlatL2", "copy_array_to_vector", "Kmeans")
        },
        get_num_gpus=lambda: 4,
        StandardGpuResources=object,
        index_cpu_to_all_gpus=all_gpus,
        GpuIndexFlatConfig=types.SimpleNamespace,
        GpuIndexFlatL2=lambda res, d, config: devices.append(config.device) or faiss.IndexFlatL2(d),
    )
    monkeypatch.setitem(sys.modules, "faiss", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    monkeypatch.setattr(km, "_GPU_RESOURCES", {})
    labels = km._lloyd_faiss(sys.modules["faiss"], x, seeds, 10, 0)
    assert devices == [2] and torch.equal(labels, reference)


def test_faiss_kmeans_gives_what_faiss_kmeans_gave():
    faiss = pytest.importorskip("faiss")
    import numpy as np

    km = importlib.import_module("ssmix.clustering.kmeans")  # the package exports the function as kmeans

    x = km._as_features(_blobs(), 8)
    seeds = km._kmeanspp_seeds(x, 8, torch.Generator().manual_seed(0))
    old = faiss.Kmeans(16, 8, niter=10, seed=0, max_points_per_centroid=10**7, gpu=False, verbose=False)
    points = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    old.train(points, init_centroids=np.ascontiguousarray(seeds.numpy(), dtype=np.float32))
    expected = torch.from_numpy(old.index.search(points, 1)[1][:, 0])
    assert torch.equal(km._lloyd_faiss(faiss, x, seeds, 10, 0), expected)


# -- likely items: a transient fp16 overflow is the GradScaler's skipped step, not a fault ------------------
def test_under_fp16_a_transient_non_finite_loss_is_a_skipped_step_and_a_run_of_them_a_fault():
    from ssmix.engine.finite import MAX_CONSECUTIVE_SKIPS, FiniteGuard, NonFiniteError

    def feed(guard, values, first_step=1):
        for i, v in enumerate(values):
            loss = torch.tensor(v)
            guard.observe({"moco": loss}, loss, first_step + i)

    inf = float("inf")
    guard = FiniteGuard(skippable=True)
    feed(guard, [1.0, inf, 1.0, float("nan"), inf, 1.0])
    guard.check(None)  # three skipped steps, none a fault
    assert int(guard.metrics()["amp_skipped_steps"]) == 3
    feed(guard, [inf] * MAX_CONSECUTIVE_SKIPS, first_step=7)
    with pytest.raises(
        NonFiniteError,
        match=rf"^training diverged: the fp16 loss was non-finite for "
        rf"{MAX_CONSECUTIVE_SKIPS} steps in a row \(each skipped by the "
        rf"GradScaler\) up to step {6 + MAX_CONSECUTIVE_SKIPS} ",
    ):
        guard.check(None)
    strict = FiniteGuard()  # bf16 / fp32: no scaler to skip the step, the first one is the fault
    feed(strict, [1.0, inf, 1.0])
    with pytest.raises(NonFiniteError, match=r"^training diverged: non-finite loss at step 2 \(moco=inf\)"):
        strict.check(None)
    assert strict.metrics() == {}


# -- likely items: ODC's initial extraction and the kNN monitor sharded over the ranks (2 gloo ranks) ---------
def _sharding_worker(out: str) -> None:
    """One rank of the sharding test (environment as torchrun sets it); writes what it saw to ``out``."""
    import os

    torch.set_num_threads(1)
    from ssmix.data.datasets import build_dataset, dataset_info_from_config
    from ssmix.distributed import gather_shards, shard
    from ssmix.engine.ddp import init_distributed
    from ssmix.engine.pretrainer import Pretrainer
    from ssmix.evaluation.features import make_loader
    from ssmix.evaluation.knn import knn_accuracy
    from ssmix.evaluation.monitor import _monitor_sets, knn_monitor
    from ssmix.models.backbones import build_backbone
    from tests.helpers import moco_overrides

    rank, world, _ = init_distributed("cpu")
    try:
        seen = {"gathered": gather_shards(torch.tensor(list(shard(7))) * 10, 7)}
        cfg = tiny_config(*moco_overrides(), "data.num_samples=10")
        torch.manual_seed(rank)  # different weights on each rank, as before DDP's broadcast at the wrap
        model = Pretrainer(cfg, 10, 10).eval()
        info = dataset_info_from_config(cfg.data)
        base = build_dataset("synthetic", "", "train", image_size=16, num_samples=10, seed=0)
        seen["odc"] = trainer._extract_fn(model, base, cfg, "cpu", info, 4)()  # broadcasts rank 0's weights
        if rank == 0:  # what one process computes: every image with rank 0's weights
            from ssmix.data.transforms import build_eval_transform

            tf = build_eval_transform(16, info.mean, info.std)
            with torch.no_grad():
                images = torch.stack([tf(base[i][0]) for i in range(10)])
                seen["odc_reference"] = model.method.embed_target(images).float()
        torch.manual_seed(0)
        trunk = build_backbone("resnet18", bn_splits=1).eval()
        for m in trunk.modules():  # per-rank BatchNorm statistics, as DDP without SyncBN keeps them
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(generator=torch.Generator().manual_seed(rank))
        own = trunk.bn1.running_mean.clone()
        seen["knn"] = knn_monitor(cfg, trunk, "cpu", k=5)
        seen["restored"] = torch.equal(trunk.bn1.running_mean, own)
        if rank == 0:
            bank, query = _monitor_sets("synthetic", cfg.data.root, 16, 10, 10, info.mean, info.std, 0)
            seen["knn_reference"] = knn_accuracy(
                trunk,
                make_loader(bank, 256, 0, torch.device("cpu")),
                make_loader(query, 256, 0, torch.device("cpu")),
                "cpu",
                k=5,
            )
        torch.save(seen, os.path.join(out, f"rank{rank}.pt"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _launch_two_ranks(worker: str, arg: str) -> List[str]:
    """Run ``tests.test_gpu_readiness.<worker>(arg)`` on 2 gloo ranks as torchrun would; their logs."""
    import os
    import socket
    import subprocess
    import time

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(2):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(r),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": str(r),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
        }
        code = f"from tests.test_gpu_readiness import {worker}; {worker}({arg!r})"
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", code],
                cwd=root,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    deadline = time.monotonic() + 180
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        if any(p.poll() not in (None, 0) for p in procs):
            break
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.kill()
    logs = [p.communicate()[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), [log[-2000:] for log in logs]
    return logs


def test_odc_extraction_and_the_knn_monitor_are_sharded_over_the_ranks_and_agree_with_one_process(tmp_path):
    """Before: every rank embedded the whole training set for ODC's k-means (only rank 0's was used), and
    the kNN monitor ran on rank 0 alone while the others waited in a collective (an ImageNet bank outlasts
    the 600 s timeout). Now each rank embeds its shard (with rank 0's weights / BatchNorm statistics) and
    the shards are gathered in order; the results equal what one process computes."""
    import os

    _launch_two_ranks("_sharding_worker", str(tmp_path))
    seen = [torch.load(os.path.join(tmp_path, f"rank{r}.pt"), weights_only=False) for r in range(2)]
    for r in range(2):
        assert seen[r]["gathered"].tolist() == [0, 10, 20, 30, 40, 50, 60]
        features, labels = seen[r]["odc"]
        torch.testing.assert_close(features, seen[0]["odc_reference"], rtol=1e-4, atol=1e-5)
        assert labels.shape == (10,)
        assert seen[r]["knn"] == seen[0]["knn_reference"] and seen[r]["restored"]


# -- likely items: the loader's workers persist across epochs -----------------------------------------------
def test_the_run_loader_keeps_its_workers_across_epochs_and_gives_the_epoch_loaders_batches():
    from ssmix.config import AugConfig
    from ssmix.data.datasets import build_dataset, dataset_info
    from ssmix.data.loader import MultiViewDataset, RunLoader, epoch_loader
    from ssmix.data.transforms import build_view_transform

    info = dataset_info("synthetic")
    data = MultiViewDataset(
        build_dataset("synthetic", "", "train", image_size=16, num_samples=12),
        build_view_transform(AugConfig(blur_prob=0), 16, info.mean, info.std),
        seed=3,
    )
    run = RunLoader(data, 4, seed=3, num_workers=1)
    try:
        pids = []
        for epoch, start in ((0, 0), (1, 1), (2, 0)):
            got = list(run.epoch(epoch, start))
            pids.append(run.loader._iterator._workers[0].pid)
            expected = list(epoch_loader(data, 4, epoch, start, 3, 0))
            assert len(got) == len(expected) == 3 - start
            for (views, labels, index), (v2, l2, i2) in zip(got, expected):
                assert torch.equal(index, i2) and all(torch.equal(a, b) for a, b in zip(views, v2))
        assert len(set(pids)) == 1  # one worker process for the three epochs
    finally:
        run.close()


MOCO_GLOBAL_8 = [
    "method.name=mocov2",
    "method.queue_size=16",
    "method.bn_splits=2",
    "method.momentum=0.9",
    "train.batch_size=null",
    "train.global_batch_size=8",
]


def _resume_worker(run_dir: str) -> None:
    torch.set_num_threads(1)
    trainer.train(tiny_config(*MOCO_GLOBAL_8, "train.max_steps=4", "resume=auto", f"output_dir={run_dir}"))


def test_a_one_process_moco_run_resumes_on_two_ddp_ranks(tmp_path):
    """Real DDP (gloo) after one process: rank 1 has no saved RNG stream (a fresh one), the split-BN
    statistics (C x 2) become plain BN's (C), the schedule continues (same global batch, 4 steps/epoch)."""
    from ssmix.engine import checkpoint as ckpt

    run = str(tmp_path / "run")
    trainer.train(tiny_config(*MOCO_GLOBAL_8, "train.max_steps=2", f"output_dir={run}"))
    logs = _launch_two_ranks("_resume_worker", run)
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run))
    assert state["step"] == 4 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert state["model"]["method.backbone.bn1.running_mean"].numel() == 64  # plain BN under DDP
    assert "BatchNorm statistics converted" in logs[0]
    assert "was written by 1 process(es), this run has 2" in logs[0]


# -- likely items: uint8 views, normalised on the device -----------------------------------------------------
@pytest.mark.parametrize("kind", ["mocov2", "simclr", "byol", "simsiam", "swav"])
def test_uint8_views_normalised_on_the_device_equal_the_float_views(kind):
    """On CUDA the loader hands over uint8 views (4x fewer pinned bytes and host-to-device traffic) and the
    trainer applies ToTensor + Normalize on the GPU: the same float operations, so the same values."""
    import random

    import numpy as np
    from PIL import Image

    from ssmix.config import AugConfig
    from ssmix.data.transforms import DeviceNormalize, build_view_transform

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    mean, std = (0.4, 0.45, 0.5), (0.2, 0.25, 0.3)
    outs = []
    for uint8 in (False, True):
        random.seed(1)
        np.random.seed(1)
        torch.manual_seed(1)
        outs.append(build_view_transform(AugConfig(kind=kind), 32, mean, std, uint8=uint8)(image))
    assert all(v.dtype == torch.uint8 for v in outs[1]) and len(outs[0]) == len(outs[1])
    normalize = DeviceNormalize(mean, std)
    views, _, _ = trainer.batch_to_device(
        [v[None] for v in outs[1]], torch.zeros(1), torch.zeros(1), "cpu", torch.contiguous_format, normalize
    )
    assert all(torch.equal(f[None], n) for f, n in zip(outs[0], views))
