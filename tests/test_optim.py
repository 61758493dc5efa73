"""The pre-training optimizer: LARS for the encoder, plain SGD for the SAMix Mixer and cluster head."""
from __future__ import annotations

import pytest
import torch

from ssmix.config import build_config
from ssmix.engine.optim import LarsWithSgdGroups, build_optimizer, set_learning_rates
from ssmix.engine.pretrainer import Pretrainer


def samix_c_model(optimizer: str):
    cfg = build_config({
        "data": {"name": "synthetic", "image_size": 16, "num_samples": 40, "num_classes": 4},
        "model": {"arch": "resnet18", "cifar_stem": True},
        "method": {"name": "simclr", "proj_hidden_dim": 32, "out_dim": 16},
        "mix": {"type": "samix_c", "mixer_lr": 0.005, "head_lr": 0.05, "mixer_warmup_epochs": 0,
                "odc": {"num_clusters": 4, "min_cluster": 1}},
        "train": {"optimizer": optimizer, "lr": 1.0, "weight_decay": 1e-4, "batch_size": 8},
    })
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
                d = d * 0.001 * before[i].norm() / (grads[i].norm() + before[i].norm() * g["weight_decay"] + 1e-8)
            # first step: the momentum buffer is the update itself
            torch.testing.assert_close(p.detach(), before[i] - g["lr"] * d, msg=f"group {g['name']}")
            i += 1
    # the Mixer's own lr, not train.lr (docs/algorithm.md §6.2)
    assert groups["mixer"]["lr"] == pytest.approx(0.005) and groups["cluster_head"]["lr"] == pytest.approx(0.05)


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
