"""The CUDA paths, marked ``cuda`` (skipped without a GPU; ``make bench-gpu`` runs them): a bf16 and an
fp16 step of every method with SAMix-C and the GradScaler state through an exact resume, channels_last,
faiss GPU k-means and a one-rank NCCL process group."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch

from ssmix.engine import checkpoint as ckpt
from tests.helpers import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.cuda

SMALL = {
    "mocov2": ["method.queue_size=16", "method.bn_splits=2"],
    "simclr": ["method.proj_hidden_dim=64", "method.out_dim=32"],
    "byol": ["method.proj_hidden_dim=64", "method.out_dim=32", "method.pred_hidden_dim=64"],
    "swav": [
        "method.proj_hidden_dim=64",
        "method.out_dim=32",
        "method.num_prototypes=16",
        "method.queue_size=0",
        "data.aug.multi_crop.sizes=[16,8]",
    ],
    "simsiam": ["method.proj_hidden_dim=64", "method.out_dim=64", "method.pred_hidden_dim=16"],
}
SAMIX_C = [
    "mix.type=samix_c",
    "mix.mixer_warmup_epochs=0",
    "mix.odc.num_clusters=4",
    "mix.odc.min_cluster=4",
    "mix.odc.centroid_interval=2",
    "mix.odc.small_cluster_interval=2",
]


def _config(method: str, amp: str, out, *extra: str):
    from ssmix.config import load_config

    return load_config(
        os.path.join(ROOT, "configs", "synthetic", f"{method}.yaml"),
        [*TINY, "device=cuda", f"train.amp={amp}", *SMALL[method], *SAMIX_C, f"output_dir={out}", *extra],
    )


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("method", list(SMALL))
def test_amp_step_with_samix_c_is_finite_and_resumes_the_scaler(tmp_path, method, amp):
    from ssmix.engine.trainer import train

    full, part = tmp_path / "full", tmp_path / "part"
    summary = train(_config(method, amp, full, "train.max_steps=3"))
    assert summary["step"] == 3 and all(math.isfinite(v) for v in summary["last"].values()), summary["last"]
    train(_config(method, amp, part, "train.max_steps=2"))
    saved = ckpt.load_checkpoint(ckpt.latest_checkpoint(str(part)))
    if amp == "fp16":
        assert saved["scaler"]["scale"] > 0 and "_growth_tracker" in saved["scaler"]
    else:
        assert saved["scaler"] == {}  # bf16 needs no loss scaling
    train(_config(method, amp, part, "train.max_steps=3", "resume=auto"))
    a = ckpt.load_checkpoint(ckpt.latest_checkpoint(str(full)))
    b = ckpt.load_checkpoint(ckpt.latest_checkpoint(str(part)))
    assert a["scaler"] == b["scaler"]  # the resumed run continued the scaler's state exactly
    assert a["step"] == b["step"] == 3


def test_channels_last_step(tmp_path):
    from ssmix.engine import trainer

    captured = {}
    build = trainer.Pretrainer

    def keep(*args, **kwargs):
        captured["model"] = build(*args, **kwargs)
        return captured["model"]

    trainer.Pretrainer = keep
    try:
        summary = trainer.train(
            _config("mocov2", "bf16", tmp_path, "model.channels_last=true", "train.max_steps=2")
        )
    finally:
        trainer.Pretrainer = build
    conv = captured["model"].method.backbone.conv1.weight
    assert conv.is_cuda and conv.is_contiguous(memory_format=torch.channels_last)
    assert all(math.isfinite(v) for v in summary["last"].values())


def test_faiss_gpu_kmeans_recovers_blobs():
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0:
        pytest.skip("faiss without GPU support (pip install -e '.[gpu]')")
    from ssmix.clustering.kmeans import kmeans

    torch.manual_seed(0)
    centres = torch.randn(8, 32) * 6
    truth = torch.arange(4000) % 8
    x = centres[truth] + torch.randn(4000, 32)
    centroids, labels = kmeans(x.numpy(), 8, iters=20, seed=0)
    # each found cluster is one true blob (a permutation of the labels)
    pairs = {(int(a), int(b)) for a, b in zip(labels, truth)}
    assert len(pairs) == 8 and centroids.shape == (8, 32)


def test_one_rank_nccl_process_group_and_ddp_step(monkeypatch):
    import torch.distributed as dist

    from ssmix.engine.ddp import DEFAULT_TIMEOUT_S, TIMEOUT_ENV

    if not dist.is_nccl_available():
        pytest.skip("torch built without NCCL")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import datetime

    dist.init_process_group(
        "nccl",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=0,
        world_size=1,
        timeout=datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))),
    )
    try:
        t = torch.arange(4.0, device="cuda")
        dist.all_reduce(t)
        assert t.tolist() == [0.0, 1.0, 2.0, 3.0]
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).cuda()
        ddp = torch.nn.parallel.DistributedDataParallel(
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(net), device_ids=[0], broadcast_buffers=False
        )
        ddp(torch.randn(2, 3, 8, 8, device="cuda")).sum().backward()
        assert net[0].weight.grad is not None and torch.isfinite(net[0].weight.grad).all()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "overrides",
    [
        ["method.name=mocov2", "mix.type=cutmix"],
        ["method.name=simclr", "data.aug.kind=simclr", "train.optimizer=lars"],
    ],
)
def test_a_training_step_never_synchronizes_with_the_host(overrides):
    """torch's own sync detector over one bf16 step (forward, backward, optimizer) with the batch copied
    as the trainer copies it (pinned, non_blocking): no device-to-host read, no blocking copy."""
    import warnings

    from ssmix.config import load_config
    from ssmix.engine.optim import build_optimizer
    from ssmix.engine.pretrainer import Pretrainer
    from ssmix.engine.trainer import batch_to_device

    extra = SMALL["mocov2"] if "mocov2" in overrides[0] else SMALL["simclr"]
    cfg = load_config(None, [*TINY, "device=cuda", *overrides, *extra])
    model = Pretrainer(cfg, 32, 10).cuda().train()
    optimizer = build_optimizer(model.param_groups(), cfg, 4)

    def step(i: int) -> None:
        host = [torch.randn(8, 3, 16, 16).pin_memory() for _ in range(2)]
        views, labels, index = batch_to_device(
            host,
            torch.zeros(8, dtype=torch.long).pin_memory(),
            torch.arange(8).pin_memory(),
            "cuda",
            torch.contiguous_format,
        )
        with torch.autocast("cuda", dtype=torch.bfloat16):
            losses, _ = model(views, labels, index, i, 10, 4)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    step(0)  # first-call work (allocator, cuDNN) outside the check
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(1)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert syncs == [], syncs
