"""No device-to-host sync per training step: losses and metrics stay tensors and are read back only at
logging steps (on a GPU every such read waits for the queued kernels)."""

from __future__ import annotations

import collections

import torch

import ssmix.engine.trainer as trainer_module
from ssmix.engine.pretrainer import Pretrainer
from tests.helpers import moco_overrides, tiny_config

READS = collections.Counter()  # step (1-based, the step whose outputs were read) -> host reads
CALLS = [0]


class CountingTensor(torch.Tensor):
    """Counts every read of its value back to Python (what forces a sync on a GPU)."""

    def _read(self, name):
        READS[CALLS[0]] += 1
        return getattr(torch.Tensor, name)(self.as_subclass(torch.Tensor))

    def __float__(self):
        return self._read("__float__")

    def __int__(self):
        return self._read("__int__")

    def __bool__(self):
        return self._read("__bool__")

    def item(self):
        return self._read("item")

    def tolist(self):
        return self._read("tolist")


def counting_step(model: Pretrainer):
    def step(*args):
        CALLS[0] += 1
        losses, metrics = model.training_step(*args)
        poison = {k: v.as_subclass(CountingTensor) for k, v in losses.items()}
        return poison, {
            k: v.as_subclass(CountingTensor) if isinstance(v, torch.Tensor) else v for k, v in metrics.items()
        }

    return step


def test_losses_and_metrics_are_read_back_only_at_logging_steps(tmp_path, monkeypatch):
    READS.clear()
    CALLS[0] = 0
    monkeypatch.setattr(trainer_module, "wrap_for_training", lambda model, *a: counting_step(model))
    # 32 images / 8 = 4 steps an epoch
    cfg = tiny_config(
        *moco_overrides(),
        "mix.type=cutmix",
        "train.log_every=3",
        "train.epochs=2",
        "train.ckpt_every=100",
        f"output_dir={tmp_path}",
    )
    trainer_module.train(cfg)
    assert CALLS[0] == 8
    assert set(READS) == {3, 6, 8}  # log_every=3, and the last step


def test_a_step_returns_its_metrics_as_tensors():
    """No metric of MoCo v2 + CutMix is turned into a Python number inside the step (each would be a
    sync); constants computed on the host are allowed only where the value never lived on the device."""
    torch.manual_seed(0)
    cfg = tiny_config(*moco_overrides(), "mix.type=cutmix")
    model = Pretrainer(cfg, num_samples=32, num_classes=10)
    views = [torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)]
    losses, metrics = model.training_step(views, torch.zeros(8, dtype=torch.long), torch.arange(8), 0, 10, 5)
    assert {"collapse_std", "mix_lam", "mask_within_var", "mask_between_var", "mask_saturated"} <= set(
        metrics
    )
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in [*losses.values(), *metrics.values()])


# -- what a step makes the host wait for, counted on CPU (ssmix.engine.syncs) -----------------------------
ODC = ["mix.type=samix_c", "mix.mixer_warmup_epochs=0", "mix.odc.num_clusters=4", "mix.odc.min_cluster=4"]
SWAV = [
    "method.name=swav",
    "data.aug.kind=swav",
    "data.aug.multi_crop.sizes=[16,8]",
    "method.num_prototypes=16",
    "method.queue_size=0",
    "method.freeze_prototypes_epochs=0",
    "train.optimizer=lars",
]
STEPS = {  # config -> the host waits of one step on a GPU, by kind
    "mocov2+cutmix": ([*moco_overrides(), "mix.type=cutmix"], {}),
    "mocov2+mixup": ([*moco_overrides(), "mix.type=mixup"], {}),
    # the ODC memory lives in host memory: the batch's index and keys are copied there (once each)
    "mocov2+samix_c": ([*moco_overrides(), *ODC], {"copy": 2}),
    "simclr+lars": (["method.name=simclr", "data.aug.kind=simclr", "train.optimizer=lars"], {}),
    "byol+lars": (["method.name=byol", "data.aug.kind=byol", "train.optimizer=lars"], {}),
    "swav+lars": (SWAV, {}),
}


def _counted_step(overrides, steps: int = 2):
    """Host waits of the last of ``steps`` training steps (forward, backward, optimizer step) with the
    batch marked as device tensors (HostSyncCounter emulates a GPU run on CPU)."""
    from ssmix.engine.optim import build_optimizer
    from ssmix.engine.syncs import HostSyncCounter, on_device

    cfg = tiny_config(*overrides)
    model = Pretrainer(cfg, num_samples=32, num_classes=10)
    model.on_train_start(lambda: (torch.randn(32, model.method.embed_dim), torch.zeros(32, dtype=torch.long)))
    optimizer = build_optimizer(model.param_groups(), cfg, steps_per_ep=4)
    sizes = [16, 16] + ([8] * 6 if cfg.method.name == "swav" else [])
    for step in range(steps):
        views = [on_device(torch.randn(8, 3, s, s)) for s in sizes]
        labels, index = on_device(torch.randint(0, 10, (8,))), on_device(torch.randperm(32)[:8])
        with HostSyncCounter(emulate=True) as counter:
            losses, _ = model.training_step(views, labels, index, step, 10, 5)
            optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            for p in model.parameters():  # gradients live on the device too
                if p.grad is not None:
                    p.grad = on_device(p.grad)
            optimizer.step()
    return counter


def test_a_step_makes_the_host_wait_only_where_the_design_needs_it():
    """No int()/bool() of a device tensor, no boolean-mask indexing, no blocking host-to-device copy in a
    step: partners, boxes and pseudo-labels are copied pinned and non_blocking, LARS chooses its trust
    ratio on the device, SimCLR and SwAV mask instead of indexing. Before: MoCo v2 + CutMix 6 blocking
    copies; SAMix-C 11 copies and 4 reads; SimCLR (lightly NT-Xent) 2 reads; LARS one per parameter."""
    for name, (overrides, expected) in STEPS.items():
        counter = _counted_step(overrides)
        assert dict(counter.counts) == expected, (name, counter.calls)


def test_the_counter_sees_reads_and_blocking_copies_of_device_tensors():
    from ssmix.engine.syncs import HostSyncCounter, on_device

    x = on_device(torch.arange(6.0))
    host = torch.arange(6.0)
    with HostSyncCounter(emulate=True) as c:
        int(x.max()), float(x.sum()), x[x > 2], x.tolist()  # four reads of the device
        y = host.to("cpu")  # a blocking host-to-device copy (what .to(device) is on a GPU run)
        z = host.to("cpu", non_blocking=True)
        w = y.cpu()  # device-to-host: always waits
        int(host.max()), host[host > 2]  # host tensors: no wait
    assert dict(c.counts) == {"read": 4, "copy": 2} and c.calls[-1] == "copy:cpu"
    assert type(z).__name__ == "DeviceMarked" and type(w) is torch.Tensor


def test_the_trainers_batch_copy_does_not_wait():
    from ssmix.engine.syncs import HostSyncCounter

    views, labels, index = [torch.randn(4, 3, 8, 8)] * 2, torch.zeros(4, dtype=torch.long), torch.arange(4)
    with HostSyncCounter(emulate=True) as c:
        out = trainer_module.batch_to_device(views, labels, index, "cpu", torch.contiguous_format)
    assert c.total == 0 and all(type(t).__name__ == "DeviceMarked" for t in [*out[0], out[1], out[2]])
