"""SimCLR, BYOL, SwAV, SimSiam: losses and mixed losses against hand-written formulas, gradient isolation,
SwAV prototype freezing and queue, BYOL tau, learning on a fixed batch, and exact resume through the
engine (the end-to-end tests are parametrized by method: select one with ``-k swav``)."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightly.loss.swav_loss import sinkhorn

import ssmix.methods.swav as swav_module
from ssmix.config import ConfigError
from ssmix.engine import checkpoint as ckpt
from ssmix.engine.optim import build_optimizer, lars_param_groups, method_param_groups, set_learning_rates
from ssmix.engine.pretrainer import Pretrainer
from ssmix.engine.trainer import train
from ssmix.methods import build_method
from ssmix.methods.base import l2n
from ssmix.methods.swav import code_entropy, swapped_prediction_loss
from ssmix.mixup import MixedBatch, MixedInputs, Pairing
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("simclr", "byol", "swav", "simsiam")
N = 8
SMALL = {  # small heads keep every test fast; the rest comes from configs/synthetic/<method>.yaml
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


def config(method, *overrides):
    return tiny_config(
        *SMALL[method], *overrides, base=str(ROOT / "configs" / "synthetic" / f"{method}.yaml")
    )


def make(method, *overrides):
    return build_method(config(method, *overrides))


def make_views(method, n=N):
    x = torch.randn(n, 3, 16, 16)
    views = [x + 0.3 * torch.randn_like(x), x + 0.3 * torch.randn_like(x)]
    if method == "swav":  # two low-resolution crops
        views += [F.interpolate(v, size=8, mode="bilinear", align_corners=False) for v in views]
    return views


def make_mixed(n=N):
    perm = torch.roll(torch.arange(n), 1)
    # sources: view 1 of i, view 2 of perm(i); targets: view 2 of i, view 1 of perm(i)
    return MixedBatch(MixedInputs(x=torch.randn(n, 3, 16, 16), lam=torch.rand(n)), Pairing(0, 1, perm))


def online_projection(model, x):
    """Online backbone + projector, recomputed (train-mode BN: the same batch gives the same output)."""
    return model.projector(model.backbone(x))


def soft_ce_reference(p, candidates, index_a, index_b, lam, t):
    """-lam log softmax(p.c/t)[a] - (1 - lam) log softmax(p.c/t)[b], averaged, with an explicit loop."""
    rows = []
    for i in range(p.shape[0]):
        logits = candidates @ p[i] / t
        log_z = torch.log(torch.exp(logits).sum())
        rows.append(-lam[i] * (logits[index_a[i]] - log_z) - (1 - lam[i]) * (logits[index_b[i]] - log_z))
    return torch.stack(rows).mean()


# -- SimCLR ------------------------------------------------------------------------------------


def test_simclr_loss_is_nt_xent_over_the_2n_views():
    model = make("simclr")
    views = make_views("simclr")
    out = model(views)
    z = l2n(online_projection(model, torch.cat(views)))
    assert torch.allclose(out.keys.flatten(0, 1), z, atol=1e-5)
    t, total = 0.5, 0.0
    for i in range(2 * N):  # l_i = -log exp(s_i,pos / t) / sum_{k != i} exp(s_ik / t)
        pos = (i + N) % (2 * N)
        denominator = sum(torch.exp(z[i] @ z[k] / t) for k in range(2 * N) if k != i)
        total = total - torch.log(torch.exp(z[i] @ z[pos] / t) / denominator)
    assert torch.allclose(out.losses["simclr"], total / (2 * N), atol=1e-5)


def test_simclr_mixed_loss_is_lambda_weighted_nt_xent_with_in_batch_negatives():
    model = make("simclr")
    out = model(make_views("simclr"))
    mixed = make_mixed()
    got = model.mixed_loss(mixed, out)
    z = l2n(online_projection(model, mixed.x))
    candidates, t = out.keys.flatten(0, 1), 0.5
    index_a, index_b = mixed.target_index(N)
    rows = []
    for i in range(N):
        s = torch.exp(candidates @ z[i] / t)
        a, b = int(index_a[i]), int(index_b[i])
        negatives = sum(s[k] for k in range(2 * N) if k not in (a, b))
        rows.append(
            -mixed.lam[i] * torch.log(s[a] / (s[a] + negatives))
            - (1 - mixed.lam[i]) * torch.log(s[b] / (s[b] + negatives))
        )
    assert torch.allclose(got, torch.stack(rows).mean(), atol=1e-5)


def test_lars_splits_biases_and_norms_into_a_group_without_weight_decay():
    model = make("simclr", "train.optimizer=lars")
    decay, no_decay = method_param_groups(model, "lars")
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in decay
    assert any(p is model.backbone.bn1.weight for p in no_decay["params"])
    assert any(p is model.backbone.conv1.weight for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert len(method_param_groups(make("simclr", "train.optimizer=sgd"), "sgd")) == 1
    # SwAV's LARS (LARC in its reference) adapts and decays every parameter: one group
    assert len(method_param_groups(make("swav"), "lars")) == 1
    assert [len(g["params"]) for g in method_param_groups(make("byol"), "lars")] == [
        len(g["params"]) for g in lars_param_groups(make("byol"))
    ]


# -- BYOL --------------------------------------------------------------------------------------


def test_byol_loss_is_symmetric_2_minus_2_cos_against_target_projections():
    model = make("byol")
    views = make_views("byol")
    x = torch.cat(views)
    out = model(views)
    with torch.no_grad():
        target = l2n(model.projector_m(model.backbone_m(x))).unflatten(0, (2, N))
    assert torch.allclose(out.keys, target, atol=1e-5) and not out.keys.requires_grad
    p = model.predictor(online_projection(model, x)).unflatten(0, (2, N))
    want = (
        2 - 2 * F.cosine_similarity(p[0], target[1]) + 2 - 2 * F.cosine_similarity(p[1], target[0])
    ).mean()
    assert torch.allclose(out.losses["byol"], want, atol=1e-5)


def test_byol_tau_follows_the_cosine_schedule_and_the_target_is_its_ema():
    model = make("byol")
    model.on_step_start(0, 50, 25)
    assert model.tau == pytest.approx(0.996)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(torch.randn_like(p))
    online = [p.clone() for p in model.backbone.parameters()]
    target = [p.clone() for p in model.backbone_m.parameters()]
    model.on_step_start(20, 50, 25)
    tau = 1 - (1 - 0.996) * (math.cos(math.pi * 20 / 49) + 1) / 2
    assert model.tau == pytest.approx(tau)
    for o, t, new in zip(online, target, model.backbone_m.parameters()):
        assert torch.allclose(new, tau * t + (1 - tau) * o, atol=1e-6)
    model.on_step_start(49, 50, 25)
    assert model.tau == pytest.approx(1.0)


# -- SwAV --------------------------------------------------------------------------------------


def test_swapped_prediction_loss_matches_the_explicit_sum():
    scores, codes, t = torch.randn(4, 5, 6), torch.softmax(torch.randn(2, 5, 6), -1), 0.1
    terms = []
    for s in range(2):  # each view v != s predicts the codes of high-res view s
        for v in range(4):
            if v != s:
                log_p = torch.log(torch.exp(scores[v] / t) / torch.exp(scores[v] / t).sum(-1, keepdim=True))
                terms.append(-(codes[s] * log_p).sum(-1).mean())
    assert torch.allclose(swapped_prediction_loss(scores, codes, t), torch.stack(terms).mean(), atol=1e-5)


def _swav_scores(model, views):
    """Prototype scores (V, N, K) recomputed by hand: backbone per resolution, projector on all crops."""
    feats = torch.cat([model.backbone(torch.cat(views[:2])), model.backbone(torch.cat(views[2:]))])
    z = F.normalize(model.projector(feats), dim=1)
    return (z @ model.prototypes.weight.t()).unflatten(0, (len(views), views[0].shape[0])), z


def test_swav_codes_are_sinkhorn_of_high_res_scores_and_loss_is_swapped_prediction():
    model = make("swav")
    model.on_step_start(0, 10, 5)
    assert torch.allclose(model.prototypes.weight.norm(dim=1), torch.ones(16), atol=1e-6)
    views = make_views("swav")
    out = model(views)
    scores, z = _swav_scores(model, views)
    codes = torch.stack([sinkhorn(scores[v].detach(), 3, 0.05) for v in range(2)])
    assert torch.allclose(out.targets, codes, atol=1e-5)
    assert torch.allclose(out.targets.sum(-1), torch.ones(2, N), atol=1e-4)
    assert torch.allclose(out.keys.flatten(0, 1), z[: 2 * N], atol=1e-5)
    assert torch.allclose(out.losses["swav"], swapped_prediction_loss(scores, codes, 0.1), atol=1e-5)
    entropy = -sum(float(c * math.log(c)) for c in codes.flatten() if c > 0) / (2 * N) / math.log(16)
    assert math.isclose(float(out.metrics["swav_code_entropy"]), entropy, rel_tol=1e-4)


def test_swav_code_entropy_is_one_for_uniform_codes_and_zero_for_one_hot():
    k = 7
    assert math.isclose(float(code_entropy(torch.full((2, 3, k), 1 / k))), 1.0, rel_tol=1e-6)
    assert float(code_entropy(torch.eye(k).expand(2, k, k))) == 0.0


def test_swav_mixed_loss_is_lambda_weighted_cross_entropy_to_the_sources_codes():
    model = make("swav", "method.freeze_prototypes_epochs=0")
    out = model(make_views("swav"))
    mixed = make_mixed()
    got = model.mixed_loss(mixed, out)
    z = l2n(online_projection(model, mixed.x))
    log_p = torch.log_softmax(z @ model.prototypes.weight.t() / 0.1, dim=-1)
    rows = []
    for i in range(N):
        code_a, code_b = out.targets[1, i], out.targets[0, mixed.pairing.perm[i]]
        rows.append(
            -mixed.lam[i] * (code_a * log_p[i]).sum() - (1 - mixed.lam[i]) * (code_b * log_p[i]).sum()
        )
    assert torch.allclose(got, torch.stack(rows).mean(), atol=1e-5)


def test_swav_prototypes_get_no_gradient_during_the_frozen_epoch_and_do_after():
    model = make("swav", "train.epochs=2")  # freeze_prototypes_epochs: 1; 10 steps -> 5 per epoch
    views = make_views("swav")
    for step, frozen in [(0, True), (4, True), (5, False)]:
        model.zero_grad(set_to_none=True)
        model.on_step_start(step, 10, 5)
        out = model(views)
        (out.losses["swav"] + model.mixed_loss(make_mixed(), out)).backward()
        assert (model.prototypes.weight.grad is None) == frozen, step
        assert model.projector.layers[0].weight.grad is not None


def test_swav_queue_fills_from_the_start_epoch_and_is_used_once_full(monkeypatch):
    rows = []

    def recording_sinkhorn(scores, **kw):
        rows.append(scores.shape[0])
        return sinkhorn(scores, **kw)

    monkeypatch.setattr(swav_module, "sinkhorn", recording_sinkhorn)
    model = make("swav", "method.queue_size=8", "method.queue_start_epoch=1", "train.epochs=2")
    assert {"queues.0.keys", "queues.0.ptr", "queues.0.filled", "queues.1.keys"} <= set(model.state_dict())
    views = make_views("swav", n=4)
    seen = []
    for step in range(9):  # 14 steps in all: epoch 1 starts at step 7
        model.on_step_start(step, 14, 7)
        out = model(views)
        seen.append(rows[-2:])
        model.on_step_end(out)
        assert int(model.queues[0].filled) == (0 if step < 7 else 4 * (step - 6)), step  # empty until epoch 1
    assert torch.equal(model.queues[1].keys[4:8], out.keys[1])  # the latest high-res embeddings
    assert seen == [[4, 4]] * 9  # epoch 0: no queue; steps 7-8 fill it (4 + 4 of 8)
    queued = [q.snapshot() for q in model.queues]
    model.on_step_start(9, 14, 7)
    out = model(views)
    assert rows[-2:] == [12, 12]
    scores, _ = _swav_scores(model, views)
    for v in range(2):
        want = sinkhorn(torch.cat([queued[v] @ model.prototypes.weight.t(), scores[v]]).detach(), 3, 0.05)[
            -4:
        ]
        assert torch.allclose(out.targets[v], want, atol=1e-5)

    empty = make("swav", "method.queue_size=8", "method.queue_start_epoch=0")
    for step in range(3):  # from epoch 0, but only once full (after two batches of 4)
        empty.on_step_start(step, 14, 7)
        out = empty(views)
        assert rows[-1] == (12 if step == 2 else 4), step
        empty.on_step_end(out)


def test_swav_epoch_comes_from_the_given_steps_per_epoch_not_from_train_epochs():
    """3 steps an epoch in a 10-step schedule of train.epochs=2 (10 // 2 = 5 would put step 3 in epoch 0)."""
    for epochs in (2, 100):  # train.epochs plays no part
        model = make("swav", f"train.epochs={epochs}", "method.queue_size=8", "method.queue_start_epoch=2")
        seen = []
        for step in range(7):
            model.on_step_start(step, 10, 3)
            seen.append((model.epoch, model.prototypes_frozen))
        assert seen == [(0, True)] * 3 + [(1, False)] * 3 + [(2, False)], epochs
        out = model(make_views("swav", n=4))
        model.on_step_end(out)  # epoch 2 = queue_start_epoch: the queue fills
        assert int(model.queues[0].filled) == 4


def test_swav_queue_size_must_divide_by_the_batch():
    model = make("swav", "method.queue_size=10")
    with pytest.raises(ConfigError, match="queue_size=10"):
        model(make_views("swav", n=4))


# -- SimSiam -----------------------------------------------------------------------------------


def test_simsiam_loss_is_symmetric_negative_cosine_with_stop_gradient():
    model = make("simsiam")
    views = make_views("simsiam")
    out = model(views)
    out.losses["simsiam"].backward()
    got_grads = [p.grad.clone() for p in model.projector.parameters()]

    def manual(stop_gradient):
        model.zero_grad(set_to_none=True)
        z = online_projection(model, torch.cat(views))
        p = model.predictor(z).unflatten(0, (2, N))
        target = (z.detach() if stop_gradient else z).unflatten(0, (2, N))
        loss = -0.5 * (F.cosine_similarity(p[0], target[1]) + F.cosine_similarity(p[1], target[0])).mean()
        loss.backward()
        return loss, [p.grad.clone() for p in model.projector.parameters()]

    want, want_grads = manual(stop_gradient=True)
    assert torch.allclose(out.losses["simsiam"], want, atol=1e-5)
    assert all(torch.allclose(g, w, atol=1e-6) for g, w in zip(got_grads, want_grads))
    _, no_stop_grads = manual(stop_gradient=False)  # the stop-gradient changes the projector's gradient
    assert not all(torch.allclose(g, w, atol=1e-6) for g, w in zip(got_grads, no_stop_grads))


@pytest.mark.parametrize("method", ["byol", "simsiam"])
def test_byol_and_simsiam_mixed_loss_is_soft_target_cross_entropy_of_the_prediction(method):
    model = make(method)
    out = model(make_views(method))
    mixed = make_mixed()
    got = model.mixed_loss(mixed, out)
    p = l2n(model.predictor(online_projection(model, mixed.x)))
    want = soft_ce_reference(p, out.keys.flatten(0, 1), *mixed.target_index(N), mixed.lam, 0.2)
    assert torch.allclose(got, want, atol=1e-5)


def test_simsiam_predictor_lr_is_constant_and_projector_depth_follows_the_config():
    cfg = config("simsiam", "train.warmup_epochs=1", "train.lr=0.1")
    model = build_method(cfg)
    optimizer = build_optimizer(model.param_groups(), cfg, steps_per_ep=5)
    lrs = []
    for step in (0, 5, 9):
        set_learning_rates(optimizer, step, 10)
        lrs.append({g["name"]: g["lr"] for g in optimizer.param_groups})
    assert [r["predictor"] for r in lrs] == [pytest.approx(0.1)] * 3
    assert lrs[0]["encoder"] == pytest.approx(0.02) and lrs[2]["encoder"] < 0.01
    predictor = {id(p) for p in model.predictor.parameters()}
    assert not predictor & {id(p) for p in optimizer.param_groups[0]["params"]}
    linears = lambda m: sum(isinstance(x, torch.nn.Linear) for x in m.projector.modules())  # noqa: E731
    assert linears(model) == 2 and linears(make("simsiam", "method.proj_layers=3")) == 3
    with pytest.raises(ConfigError, match="proj_layers"):
        make("simsiam", "method.proj_layers=4")


# -- every method ------------------------------------------------------------------------------


def _any_config(method, *overrides):
    """``config(method)``, MoCo v2 included (its synthetic config, small queue)."""
    if method == "mocov2":
        return tiny_config(
            "method.queue_size=16",
            "method.bn_splits=2",
            *overrides,
            base=str(ROOT / "configs" / "synthetic" / "mocov2.yaml"),
        )
    return config(method, *overrides)


@pytest.mark.parametrize("method", ("mocov2", *METHODS))
def test_the_base_class_builds_the_backbone_first_from_the_model_config(method):
    """The online trunk is the first module created (the seeded init of every later one is unchanged) and
    follows model.*: the same weights as a trunk built alone from the same seed."""
    from ssmix.models.backbones import build_backbone

    cfg = _any_config(method, "model.zero_init_residual=true")
    torch.manual_seed(0)
    model = build_method(cfg)
    torch.manual_seed(0)
    m = cfg.model
    alone = build_backbone(
        m.arch, m.cifar_stem, m.zero_init_residual, bn_splits=2 if method == "mocov2" else 1
    )
    assert next(iter(model.named_children()))[0] == "backbone"
    assert list(model.state_dict())[: len(alone.state_dict())] == [
        f"backbone.{k}" for k in alone.state_dict()
    ]
    for key, value in alone.state_dict().items():
        assert torch.equal(model.state_dict()[f"backbone.{key}"], value), key


@pytest.mark.parametrize("start", [0, 2])
@pytest.mark.parametrize("method", ("mocov2", *METHODS))
def test_embed_mixed_is_the_online_trunk_from_start_then_the_projector(method, start):
    """The one mixed-input forward every method's mixed_loss uses (ManifoldMix enters at ``start`` > 0);
    train-mode BN on the same batch gives the same output, bit for bit."""
    model = build_method(_any_config(method))
    x = torch.randn(N, 3, 16, 16)
    hidden = model.online_prefix(x, start).detach() if start else x
    mixed = MixedBatch(MixedInputs(x=hidden, lam=torch.rand(N), start=start), make_mixed().pairing)
    with torch.no_grad():
        z = model.projector(model.backbone(hidden, start=start))
        assert torch.equal(model.embed_mixed(mixed), F.normalize(z.float(), dim=-1))
        if hasattr(model, "predictor"):  # BYOL, SimSiam: the prediction of the projection
            assert torch.equal(
                model.embed_mixed(mixed, head=model.predictor),
                F.normalize(model.predictor(z).float(), dim=-1),
            )


def test_byol_and_simsiam_share_one_mixed_loss():
    from ssmix.methods.byol import BYOL
    from ssmix.methods.simsiam import SimSiam

    assert BYOL.mixed_loss is SimSiam.mixed_loss


@pytest.mark.parametrize("method", METHODS)
def test_outputs_keys_maps_and_gradients_reach_exactly_the_online_parameters(method):
    model = make(method, "method.freeze_prototypes_epochs=0") if method == "swav" else make(method)
    model.on_step_start(0, 10, 5)
    views = make_views(method)
    out = model(views, map_at=3)
    d = model.embed_dim
    assert out.keys.shape == (2, N, d) and not out.keys.requires_grad
    assert torch.allclose(out.keys.norm(dim=-1), torch.ones(2, N), atol=1e-5)
    assert out.negatives is None and out.metrics["collapse_std"] > 0
    trunk = model.backbone_m if method == "byol" else model.backbone
    with torch.no_grad():
        maps = trunk.run(torch.cat(views[:2]), 0, 3).unflatten(0, (2, N))
    assert out.feature_maps.shape == (2, N, 256, 1, 1) and not out.feature_maps.requires_grad
    assert torch.allclose(out.feature_maps, maps, atol=1e-5)

    sum(out.losses.values()).backward()
    for name, p in model.named_parameters():
        if name.startswith(("backbone_m.", "projector_m.")):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.requires_grad and p.grad is not None, name

    model.zero_grad(set_to_none=True)
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    e = model.embed_target(x)
    assert e.shape == (4, d) and torch.allclose(e.norm(dim=-1), torch.ones(4), atol=1e-5)
    e.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", METHODS)
def test_learns_on_a_fixed_batch(method):
    """Repeated steps on one batch through the Pretrainer lower the method's loss."""
    cfg = config(method, "method.freeze_prototypes_epochs=0") if method == "swav" else config(method)
    model = Pretrainer(cfg, 32, 10)
    optimizer = torch.optim.SGD(
        [{"params": g["params"]} for g in model.param_groups()], lr=0.05, momentum=0.9
    )
    views = make_views(method)
    losses = []
    for step in range(10):
        out, _ = model.training_step(views, torch.zeros(N), torch.arange(N), step, 100, 50)
        loss = sum(out.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1, losses


@pytest.mark.parametrize("method", METHODS)
def test_mixed_views_from_the_pipeline_train_the_online_encoder(method):
    """One step with the input mixup mixer: the pipeline's MixedBatch reaches ``mixed_loss``."""
    pytest.importorskip("ssmix.mixers.handcrafted")  # registers mix.type=mixup
    model = Pretrainer(config(method, "mix.type=mixup"), 32, 10)
    losses, metrics = model.training_step(make_views(method), torch.zeros(N), torch.arange(N), 0, 10, 5)
    assert set(losses) == {method, "mix"} and torch.isfinite(losses["mix"]) and 0 < metrics["mix_lam"] < 1
    losses["mix"].backward()
    assert model.method.backbone.conv1.weight.grad is not None


def _run(method, out_dir, *overrides):
    extra = ["method.queue_size=8", "method.queue_start_epoch=1"] if method == "swav" else []
    cfg = config(
        method,
        *extra,
        f"output_dir={out_dir}",
        "data.num_samples=8",
        "train.batch_size=4",
        "train.log_every=1",
        *overrides,
    )
    return train(cfg)


def test_the_trainer_gives_the_method_its_step_schedule_and_epoch_length(tmp_path, monkeypatch):
    """(step, total_steps, steps_per_epoch) from the loader: 8 images / batch 4 = 2 steps an epoch, 2 epochs."""
    from ssmix.methods.simclr import SimCLR

    seen = []
    monkeypatch.setattr(SimCLR, "on_step_start", lambda self, *schedule: seen.append(schedule))
    _run("simclr", tmp_path, "train.max_steps=3")
    assert seen == [(0, 4, 2), (1, 4, 2), (2, 4, 2)]


@pytest.mark.parametrize("method", METHODS)
def test_engine_run_resumes_exactly(method, tmp_path):
    """Synthetic config through ssmix.engine.trainer.train: 2 steps + resume to 4 == 4 uninterrupted.
    2 steps per epoch, so the resumed run starts epoch 1: SwAV's prototypes unfreeze and its queue,
    filled before the checkpoint, joins Sinkhorn; BYOL's tau reaches 1 at the last step."""
    a, b = tmp_path / "a", tmp_path / "b"
    summary = _run(method, a)
    assert summary["step"] == summary["total_steps"] == 4 and math.isfinite(summary["last"]["loss"])
    _run(method, b, "train.max_steps=2")
    assert _run(method, b, "resume=auto")["step"] == 4
    sa = ckpt.load_checkpoint(ckpt.latest_checkpoint(str(a)))
    sb = ckpt.load_checkpoint(ckpt.latest_checkpoint(str(b)))
    assert sa["model"].keys() == sb["model"].keys()
    for key, value in sa["model"].items():
        assert torch.equal(value, sb["model"][key]), key
    if method == "swav":
        assert int(sa["model"]["method.queues.0.filled"]) == 8
