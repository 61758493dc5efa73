"""MoCo v2: loss formula, queue discipline, momentum update, gradient isolation, keys of view 2 alone
when the step does not mix."""

import torch

from ssmix.losses.contrastive import info_nce
from ssmix.methods.base import l2n
from ssmix.methods.mocov2 import MoCoV2
from tests.helpers import moco_overrides, tiny_config


def _model_and_views(n=8):
    cfg = tiny_config(*moco_overrides())
    model = MoCoV2(cfg.method, cfg.model)
    views = [torch.randn(n, 3, 16, 16), torch.randn(n, 3, 16, 16)]
    return model, views


def test_loss_is_info_nce_of_view1_queries_against_view2_keys_and_the_queue():
    model, views = _model_and_views()
    queue_before = model.queue.snapshot()
    out = model(views)
    q = l2n(model.projector(model.backbone(views[0])))  # train-mode BN: same batch -> same output
    want = info_nce(q, out.keys[1], queue_before, 0.2).mean()
    assert torch.allclose(out.losses["moco"], want, atol=1e-5)
    assert torch.equal(out.negatives, queue_before)
    assert out.keys.shape == (2, 8, 128) and not out.keys.requires_grad
    assert torch.allclose(out.keys.norm(dim=-1), torch.ones(2, 8), atol=1e-5)


def test_without_mixing_only_view2_keys_are_computed():
    model, views = _model_and_views()
    queue_before = model.queue.snapshot()
    model.step_mixes = False  # as the Pretrainer sets it for mix.type=none
    out = model(views)
    assert out.keys.shape == (1, 8, 128)
    q = l2n(model.projector(model.backbone(views[0])))
    assert torch.allclose(out.losses["moco"], info_nce(q, out.keys[0], queue_before, 0.2).mean(), atol=1e-5)
    model.on_step_end(out)
    assert torch.equal(model.queue.keys[:8], out.keys[0])


def test_queue_read_once_enqueued_once_with_view2_keys():
    model, views = _model_and_views()
    out = model(views)
    assert int(model.queue.ptr) == 0
    model.on_step_end(out)
    assert int(model.queue.ptr) == 8
    assert torch.equal(model.queue.keys[:8], out.keys[1])
    assert "queue.keys" in model.state_dict() and "queue.ptr" in model.state_dict()


def test_momentum_update_is_ema_of_online_parameters():
    model, _ = _model_and_views()
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(torch.randn_like(p))
    online = [p.clone() for p in model.backbone.parameters()]
    target = [p.clone() for p in model.backbone_m.parameters()]
    model.on_step_start(0, 10, 5)
    for o, t, new in zip(online, target, model.backbone_m.parameters()):
        assert torch.allclose(new, 0.9 * t + 0.1 * o, atol=1e-6)


def test_gradients_reach_online_encoder_only():
    model, views = _model_and_views()
    out = model(views)
    out.losses["moco"].backward()
    for name, p in model.named_parameters():
        if name.startswith(("backbone.", "projector.")):
            assert p.grad is not None, name
        else:
            assert p.grad is None and not p.requires_grad, name
    assert any(float(p.grad.abs().sum()) > 0 for p in model.backbone.parameters())


def test_embed_target_gives_gradient_to_the_input_only():
    model, views = _model_and_views()
    x = views[0].clone().requires_grad_(True)
    model.embed_target(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None for p in model.parameters())


def test_feature_maps_are_momentum_stage3_maps_of_both_views():
    model, views = _model_and_views()
    out = model(views, map_at=3)
    assert out.feature_maps.shape == (2, 8, 256, 1, 1)
    assert not out.feature_maps.requires_grad


def test_symmetric_loss_averages_both_directions_and_proj_bn_spreads_a_random_encoder():
    cfg = tiny_config(*moco_overrides(), "method.symmetric=true", "method.proj_bn=true")
    model = MoCoV2(cfg.method, cfg.model)
    views = [torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)]
    queue_before = model.queue.snapshot()
    model.step_mixes = False
    out = model(views)  # symmetric needs both views' keys anyway
    assert out.keys.shape == (2, 8, 128)
    q = l2n(model.projector(model.backbone(torch.cat(views))))  # one pass: BN over both views, as the step
    q1, q2 = q[:8], q[8:]
    want = 0.5 * (
        info_nce(q1, out.keys[1], queue_before, 0.2).mean()
        + info_nce(q2, out.keys[0], queue_before, 0.2).mean()
    )
    assert torch.allclose(out.losses["moco"], want, atol=1e-5)
    model.on_step_end(out)
    assert torch.equal(model.queue.keys[:8], out.keys[1])  # still the view-2 keys, once per step
    assert isinstance(model.projector.layers[1], torch.nn.BatchNorm1d)
    # BN in the head: a random encoder's embeddings are spread (std ~1/sqrt(D)), not one direction
    assert float(out.metrics["collapse_std"]) > 0.5 / 128**0.5


def test_the_pretrainer_tells_moco_whether_the_step_mixes_and_an_unmixed_step_keys_view2_only():
    """mix.type=none: one momentum pass over view 2 (N images); a mixer: one over both views (2N)."""
    import ssmix.mixers.handcrafted  # noqa: F401  (registers mix.type=mixup)
    from ssmix.engine.pretrainer import Pretrainer

    views = [torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)]
    for mix, rows in (("none", [8]), ("mixup", [16])):
        model = Pretrainer(tiny_config(*moco_overrides(), f"mix.type={mix}"), 32, 10)
        assert model.method.step_mixes is (mix != "none")
        seen = []
        model.method.backbone_m.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
        model.training_step(views, torch.zeros(8), torch.arange(8), 0, 10, 5)
        assert seen == rows, mix
