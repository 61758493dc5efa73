"""The pre-training optimizer: SGD or LARS over the model's parameter groups, per-iteration schedules.

Every choice that depends on ``train.optimizer`` is made here. Groups come from
``Pretrainer.param_groups()`` (the method's through :func:`method_param_groups`, then the mixer's); a
group's own ``lr`` / ``momentum`` / ``weight_decay`` / ``warmup_epochs`` / ``min_lr`` override
``cfg.train``. A group with ``"fixed_lr": True`` (SimSiam's predictor) keeps its base lr at every step:
no warm-up, no decay. A group with
``"lars": False`` (the SAMix Mixer and cluster head, docs/algorithm.md §6.2) is stepped by plain SGD
even when the encoder uses LARS: LARS's trust ratio would shrink their updates ~20x below the SGD
the paper specifies.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch
import torch.nn as nn
from lightly.models.utils import get_weight_decay_parameters
from lightly.utils.lars import LARS as _LightlyLARS

from ssmix.config import Config, ConfigError, per_process_batch, scaled_lr
from ssmix.engine.schedule import warmup_cosine


class LARS(_LightlyLARS):
    """lightly's LARS (its groups, defaults and state) with a step that never reads a value back: the
    trust ratio ``trust x |p| / (|g| + wd |p| + eps)`` and the weight decay apply where both norms are
    non-zero, chosen by ``torch.where`` on the device instead of a Python ``if`` per parameter (a host
    sync per parameter on a GPU: ~160 a step for a ResNet-50)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(self._direction(p, group), alpha=-group["lr"])
        return loss

    def _direction(self, p: torch.Tensor, group: Dict[str, Any]) -> torch.Tensor:
        d_p, wd = p.grad, group["weight_decay"]
        if wd != 0:
            p_norm, g_norm = torch.norm(p), torch.norm(d_p)
            ratio = p_norm / (g_norm + p_norm * wd + group["eps"]) * group["trust_coefficient"]
            d_p = torch.where((p_norm != 0) & (g_norm != 0), d_p.add(p, alpha=wd) * ratio, d_p)
        momentum = group["momentum"]
        if momentum == 0:
            return d_p
        state = self.state[p]
        if "momentum_buffer" not in state:
            buf = state["momentum_buffer"] = torch.clone(d_p).detach()
        else:
            buf = state["momentum_buffer"]
            buf.mul_(momentum).add_(d_p, alpha=1 - group["dampening"])
        return d_p.add(buf, alpha=momentum) if group["nesterov"] else buf


def lars_param_groups(module: nn.Module) -> List[Dict[str, Any]]:
    """Trainable parameters in two groups: biases and normalisation parameters get neither weight decay
    nor LARS adaptation (as the SimCLR reference code and BYOL sec. 3.3; lightly's LARS skips the
    adaptation of a group whose ``weight_decay`` is 0)."""
    decay, no_decay = get_weight_decay_parameters([module])
    return [
        {"name": "encoder", "params": [p for p in decay if p.requires_grad]},
        {"name": "encoder_no_decay", "params": [p for p in no_decay if p.requires_grad], "weight_decay": 0.0},
    ]


def method_param_groups(method: nn.Module, optimizer: str) -> List[Dict[str, Any]]:
    """The method's optimizer groups for ``train.optimizer``: under LARS, a method with
    ``lars_exclude_bias_and_norm`` (BYOL, SimCLR) gets :func:`lars_param_groups`; otherwise its own
    ``param_groups()``."""
    if optimizer == "lars" and getattr(method, "lars_exclude_bias_and_norm", False):
        return lars_param_groups(method)
    return method.param_groups()


class LarsWithSgdGroups:
    """LARS for the groups that want it, torch SGD for the rest, behind one optimizer interface
    (``param_groups``, ``step``, ``zero_grad``, ``state_dict``, ``load_state_dict``): what the
    trainer, the schedule and ``torch.amp.GradScaler`` use."""

    def __init__(self, lars: torch.optim.Optimizer, sgd: torch.optim.Optimizer) -> None:
        self.parts = (lars, sgd)
        self.defaults: Dict[str, Any] = dict(lars.defaults)

    @property
    def param_groups(self) -> List[Dict[str, Any]]:
        return [g for part in self.parts for g in part.param_groups]

    @property
    def state(self) -> Dict[Any, Any]:
        return {**self.parts[0].state, **self.parts[1].state}

    def step(self, closure=None) -> None:
        if closure is not None:
            raise ValueError("LarsWithSgdGroups.step takes no closure")
        for part in self.parts:
            part.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> Dict[str, Any]:
        return {"lars": self.parts[0].state_dict(), "sgd": self.parts[1].state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.parts[0].load_state_dict(state["lars"])
        self.parts[1].load_state_dict(state["sgd"])


def build_optimizer(groups: List[Dict[str, Any]], cfg: Config, steps_per_ep: int, world: int = 1):
    """One optimizer over every group (see the module docstring for the per-group keys), for ``world``
    processes: a group without an ``lr`` of its own gets :func:`~ssmix.config.scaled_lr` (global batch).
    A ``fixed_lr`` group records its schedule as constant too (no warm-up steps, final lr = base lr)."""
    tc = cfg.train
    lr = scaled_lr(tc, per_process_batch(tc, world) * world)
    param_groups = []
    for g in groups:
        base, fixed = g.get("lr", lr), bool(g.get("fixed_lr", False))
        param_groups.append(
            {
                "params": g["params"],
                "name": g.get("name", "group"),
                "lr": base,
                "base_lr": base,
                "momentum": g.get("momentum", tc.momentum),
                "weight_decay": g.get("weight_decay", tc.weight_decay),
                "warmup_steps": 0
                if fixed
                else int(round(g.get("warmup_epochs", tc.warmup_epochs) * steps_per_ep)),
                "final_lr": base if fixed else g.get("min_lr", base * tc.min_lr_ratio),
                "lars": g.get("lars", True),
                "fixed_lr": fixed,
            }
        )
    if tc.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=lr)
    if tc.optimizer == "lars":
        sgd_groups = [g for g in param_groups if not g["lars"]]
        lars = LARS([g for g in param_groups if g["lars"]], lr=lr)
        return LarsWithSgdGroups(lars, torch.optim.SGD(sgd_groups, lr=lr)) if sgd_groups else lars
    raise ConfigError(f"train.optimizer: expected sgd or lars, got '{tc.optimizer}'")


def set_learning_rates(optimizer, step: int, total_steps: int) -> None:
    """Per-iteration warm-up + cosine for every group, each with its own base / final lr; a ``fixed_lr``
    group stays at its base lr."""
    for g in optimizer.param_groups:
        if g.get("fixed_lr", False):
            g["lr"] = g["base_lr"]
        else:
            g["lr"] = warmup_cosine(step, total_steps, g["base_lr"], g["warmup_steps"], g["final_lr"])
