"""The pre-training optimizer: LARS for the encoder, plain SGD for the SAMix Mixer and cluster head, constant-lr
(``fixed_lr``) groups beside the warm-up + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch

from ssmix.config import build_config
from ssmix.engine.optim import LarsWithSgdGroups, build_optimizer, set_learning_rates
from ssmix.engine.pretrainer import Pretrainer


def samix_c_model(optimizer: str):
    cfg = build_config(
        {
            "data": {"name": "synthetic", "image_size": 16, "num_samples": 40, "num_classes": 4},
            "model": {"arch": "resnet18", "cifar_stem": True},
            "method": {"name": "simclr", "proj_hidden_dim": 32, "out_dim": 16},
            "mix": {
                "type": "samix_c",
                "mixer_lr": 0.005,
                "head_lr": 0.05,
                "mixer_warmup_epochs": 0,
                "odc": {"num_clusters": 4, "min_cluster": 1},
            },
            "train": {"optimizer": optimizer, "lr": 1.0, "weight_decay": 1e-4, "batch_size": 8},
        }
    )
    model = Pretrainer(cfg, num_samples=40, num_classes=4)
    return cfg, model, build_optimizer(model.param_groups(), cfg, steps_per_ep=5)


def test_mixer_and_cluster_head_use_plain_sgd_under_lars():
    torch.manual_seed(0)
    cfg, model, optimizer = samix_c_model("lars")
    assert isinstance(optimizer, LarsWithSgdGroups)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["mixer"]["lars"] is False and groups["cluster_head"]["lars"] is False
    assert groups["encoder"]["lars"] is True
    set_learning_rates(optimizer, 0, 100)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.randn_like(p)
    grads = [p.grad.clone() for p in params]
    optimizer.step()
    i = 0
    for g in optimizer.param_groups:
        for p in g["params"]:
            d = grads[i] + g["weight_decay"] * before[i]
            if g["lars"] and g["weight_decay"] != 0:  # LARS trust ratio (lightly's formula)
                d = (
                    d
                    * 0.001
                    * before[i].norm()
                    / (grads[i].norm() + before[i].norm() * g["weight_decay"] + 1e-8)
                )
            # first step: the momentum buffer is the update itself
            torch.testing.assert_close(p.detach(), before[i] - g["lr"] * d, msg=f"group {g['name']}")
            i += 1
    # the Mixer's own lr, not train.lr (docs/algorithm.md §6.2)
    assert groups["mixer"]["lr"] == pytest.approx(0.005) and groups["cluster_head"]["lr"] == pytest.approx(
        0.05
    )


def test_lars_with_sgd_groups_state_round_trips():
    torch.manual_seed(0)
    _, model, optimizer = samix_c_model("lars")
    for p in (p for g in optimizer.param_groups for p in g["params"]):
        p.grad = torch.randn_like(p)
    optimizer.step()
    state = optimizer.state_dict()
    _, _, fresh = samix_c_model("lars")
    fresh.load_state_dict(state)
    assert len(fresh.state) == len(optimizer.state) > 0
    _, _, sgd = samix_c_model("sgd")
    assert isinstance(sgd, torch.optim.SGD)  # nothing to split: one SGD over every group


def _fixed_and_scheduled(min_lr_ratio: float = 0.1):
    cfg = build_config(
        {"train": {"optimizer": "sgd", "lr": 0.1, "warmup_epochs": 1, "min_lr_ratio": min_lr_ratio}}
    )
    p = [torch.nn.Parameter(torch.zeros(2)) for _ in range(3)]
    groups = [
        {"name": "scheduled", "params": [p[0]]},
        {"name": "fixed", "params": [p[1]], "fixed_lr": True},
        {"name": "fixed_own", "params": [p[2]], "lr": 0.02, "fixed_lr": True, "warmup_epochs": 3},
    ]
    return build_optimizer(groups, cfg, steps_per_ep=5)


def test_a_fixed_lr_group_keeps_its_base_lr_while_the_others_follow_warmup_and_cosine():
    """SimSiam's predictor (``fixed_lr``): no warm-up, no decay, at the run's lr or its own ``lr``."""
    optimizer = _fixed_and_scheduled()
    total, warmup, base, final = 20, 5, 0.1, 0.01
    for step in range(total):
        set_learning_rates(optimizer, step, total)
        lr = {g["name"]: g["lr"] for g in optimizer.param_groups}
        if step < warmup:
            want = base * (step + 1) / warmup
        else:
            want = final + 0.5 * (base - final) * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
        assert lr["scheduled"] == pytest.approx(want, rel=1e-12), step
        assert lr["fixed"] == 0.1 and lr["fixed_own"] == 0.02, step
    fixed = {g["name"]: (g["warmup_steps"], g["final_lr"]) for g in optimizer.param_groups if g["fixed_lr"]}
    assert fixed == {"fixed": (0, 0.1), "fixed_own": (0, 0.02)}  # the recorded schedule is constant too


def test_an_optimizer_state_saved_before_fixed_lr_existed_resumes_at_the_same_lrs():
    """Checkpoints written before the ``fixed_lr`` key held the constant group as warm-up 0, final = base."""
    state = _fixed_and_scheduled().state_dict()
    for g in state["param_groups"]:
        del g["fixed_lr"]
    resumed, fresh = _fixed_and_scheduled(), _fixed_and_scheduled()
    resumed.load_state_dict(state)
    for step in (0, 3, 11, 19):
        set_learning_rates(resumed, step, 20)
        set_learning_rates(fresh, step, 20)
        assert [g["lr"] for g in resumed.param_groups] == [g["lr"] for g in fresh.param_groups], step
