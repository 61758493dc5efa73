"""The cross-view mixup of the training step (ssmix.engine.pretrainer): pairing and targets, queue
discipline with mixing, gradient isolation, and every method x every mixer for a step."""

import dataclasses
import os

import pytest
import torch

from ssmix.engine.pretrainer import Pretrainer
from ssmix.losses.contrastive import mixup_info_nce
from ssmix.methods import METHODS
from ssmix.methods.base import l2n
from ssmix.mixers import MIXERS
from ssmix.mixup import MixContext
from tests.helpers import moco_overrides, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _views(n=8, size=16):
    return [torch.randn(n, 3, size, size), torch.randn(n, 3, size, size)]


def _capture(model):
    """Record the MixedBatch and MethodOutput the step hands to ``mixed_loss``."""
    seen = {}
    original = model.method.mixed_loss

    def spy(mixed, out):
        seen["mixed"], seen["out"] = mixed, out
        seen["loss"] = original(mixed, out)
        return seen["loss"]

    model.method.mixed_loss = spy
    return seen


@pytest.mark.parametrize("cross_view", [True, False])
def test_mixup_pairs_and_targets(cross_view):
    cfg = tiny_config(*moco_overrides(), "mix.type=mixup", f"mix.cross_view={cross_view}")
    model = Pretrainer(cfg, 32, 10)
    seen = _capture(model)
    views = _views()
    torch.manual_seed(3)
    model.training_step(views, torch.zeros(8), torch.arange(8), 0, 10, 5)
    mixed, out = seen["mixed"], seen["out"]
    perm, lam = mixed.pairing.perm, mixed.lam
    assert not bool((perm == torch.arange(8)).any())  # no fixed points
    assert sorted(perm.tolist()) == list(range(8))
    source_b = views[1 if cross_view else 0][perm]
    want_x = lam[:, None, None, None] * views[0] + (1 - lam[:, None, None, None]) * source_b
    assert torch.allclose(mixed.x, want_x, atol=1e-6)
    # Sources: view 1 of i and view 2 (cross-view) or 1 of pi(i); targets: i's other view (view 2) and
    # pi(i)'s other view (view 1 cross-view, view 2 same-view).
    assert (mixed.pairing.view_a, mixed.pairing.view_b) == ((0, 1) if cross_view else (0, 0))
    key_b = out.keys[0 if cross_view else 1][perm]
    target_a, target_b = mixed.targets(out.keys)
    assert torch.equal(target_a, out.keys[1]) and torch.equal(target_b, key_b)
    z = l2n(model.method.projector(model.method.backbone(mixed.x)))
    want = mixup_info_nce(z, out.keys[1], key_b, lam, out.negatives, 0.2).mean()
    assert torch.allclose(seen["loss"], want, atol=1e-5)


def test_queue_is_read_once_and_enqueued_once_with_mixing():
    cfg = tiny_config(*moco_overrides(), "mix.type=cutmix")
    model = Pretrainer(cfg, 32, 10)
    seen = _capture(model)
    before = model.method.queue.snapshot()
    model.training_step(_views(), torch.zeros(8), torch.arange(8), 0, 10, 5)
    assert torch.equal(seen["out"].negatives, before)  # the mixed loss used the pre-step queue
    assert int(model.method.queue.ptr) == 8  # one enqueue of the batch
    assert torch.equal(model.method.queue.keys[:8], seen["out"].keys[1])


def test_mixed_loss_trains_the_online_encoder_only():
    cfg = tiny_config(*moco_overrides(), "mix.type=mixup")
    model = Pretrainer(cfg, 32, 10)
    seen = _capture(model)
    model.training_step(_views(), torch.zeros(8), torch.arange(8), 0, 10, 5)
    seen["loss"].backward()
    assert not seen["out"].keys.requires_grad
    for name, p in model.named_parameters():
        assert (p.grad is not None) == name.startswith(("method.backbone.", "method.projector.")), name


def test_odc_labels_are_read_before_the_memory_update():
    cfg = tiny_config(
        *moco_overrides(),
        "mix.type=interintra",
        "mix.labels=odc",
        "mix.odc.num_clusters=4",
        "mix.odc.min_cluster=1",
        "mix.odc.centroid_interval=1",
        "mix.odc.small_cluster_interval=1",
    )
    model = Pretrainer(cfg, 32, 10)
    model.on_train_start(
        lambda: (torch.nn.functional.normalize(torch.randn(32, 128), dim=1), torch.zeros(32))
    )
    seen_labels = {}
    mixer_forward = model.mixing.mixer.forward

    def spy(xa, xb, lam, ctx):
        seen_labels["ctx"] = ctx.labels.clone()
        return mixer_forward(xa, xb, lam, ctx)

    model.mixing.mixer.forward = spy
    seen = _capture(model)
    index = torch.arange(8) * 4
    before = model.mixing.odc.labels_of(index).clone()
    model.training_step(_views(), torch.zeros(8), index, 0, 10, 5)
    assert torch.equal(seen_labels["ctx"], before)
    # ... and the memory then holds this step's view-1 target embeddings (feature momentum 1).
    assert torch.allclose(model.mixing.odc.features[index], seen["out"].keys[0], atol=1e-6)


METHOD_NAMES = sorted(METHODS)
MIXER_NAMES = sorted(m for m in MIXERS if m != "samix_p")


def _method_config(name, *overrides):
    base = os.path.join(ROOT, "configs", "synthetic", f"{name}.yaml")
    return tiny_config(*overrides, base=base)


@pytest.mark.parametrize("mixer", MIXER_NAMES)
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_with_every_mixer_steps(method, mixer):
    labelled = mixer in ("interintra", "samix_c")
    extra = ["mix.labels=dataset", "mix.odc.num_clusters=10"] if labelled else []
    cfg = _method_config(method, f"mix.type={mixer}", *extra)
    model = Pretrainer(cfg, 32, 10)
    params = [p for g in model.param_groups() for p in g["params"]]
    opt = torch.optim.SGD(params, lr=0.01)
    views = [torch.randn(8, 3, s, s) for s in _view_sizes(cfg)]
    for step in range(2):
        losses, metrics = model.training_step(views, torch.arange(8) % 10, torch.arange(8), step, 10, 5)
        loss = sum(losses.values())
        assert torch.isfinite(loss), losses
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert "mix" in losses
    if mixer.startswith("samix"):
        mixer_params = list(model.mixing.mixer.net.parameters())
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in mixer_params)


def _view_sizes(cfg):
    if cfg.data.aug.kind == "swav":
        mc = cfg.data.aug.multi_crop
        return [s for s, c in zip(mc.sizes, mc.counts) for _ in range(c)]
    return [cfg.data.image_size, cfg.data.image_size]


@pytest.mark.parametrize(
    "mixer,extra,own",
    [
        ("samix_i", [], ["mixer_mask_within_var", "mixer_mask_between_var", "mixer_mask_saturated"]),
        (
            "samix_c",
            ["mix.labels=dataset", "mix.odc.num_clusters=10"],
            [
                "cluster_head_acc",
                "cluster_head_ce",
                "cluster_head_ce_chance",
                "mixer_mask_within_var",
                "mixer_mask_between_var",
                "mixer_mask_saturated",
            ],
        ),
        ("cutmix", [], []),
    ],
)
def test_the_step_logs_the_metrics_its_mixer_returns(mixer, extra, own):
    """A learned mixer returns its metrics with its losses (MixerLosses), and the step logs them as they
    are, after mix_lam and before the encoder masks' mask_*; nothing travels through the MixContext."""
    model = Pretrainer(tiny_config(*moco_overrides(), f"mix.type={mixer}", *extra), 32, 10)
    returned = []
    if model.mixing.mixer.learned:
        original = model.mixing.mixer.aux_losses

        def spy(ctx, lam):
            returned.append(original(ctx, lam))
            return returned[-1]

        model.mixing.mixer.aux_losses = spy
    torch.manual_seed(0)
    losses, metrics = model.training_step(_views(), torch.arange(8) % 10, torch.arange(8), 0, 10, 5)
    names = list(metrics)
    mask = ["mask_within_var", "mask_between_var", "mask_saturated"]
    assert names[names.index("mix_lam") + 1 :][: len(own) + len(mask)] == own + mask
    if returned:
        assert set(returned[0].losses) <= set(losses)
        for key, value in returned[0].metrics.items():
            assert metrics[key] is value, key
    assert "metrics" not in {f.name for f in dataclasses.fields(MixContext)}
