"""One loader for every encoder file the detection transfer meets (detection_notes.md 1.6, 4.2).

:func:`load_encoder_state` returns a plain torchvision ResNet state_dict without ``fc`` (the format of
ssmix's ``backbone.pth``), verified by loading it with ``strict=True`` into ``torchvision.models.<arch>()``.
"""
from __future__ import annotations

import glob
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor

from ssmix.config import ConfigError
from ssmix.models.backbones import infer_arch, load_torchvision_resnet

# (container key or None for the object itself, key prefix of the trunk, what it is), first match wins.
LAYOUTS = (
    ("model", "method.backbone.", "ssmix training checkpoint"),
    ("state_dict", "module.encoder_q.", "MoCo checkpoint"),
    (None, "", "torchvision / ssmix backbone.pth state_dict"),
    ("model", "", "torchvision reference-training checkpoint"),
    ("state_dict", "", "state_dict checkpoint"),
    (None, "module.", "DistributedDataParallel state_dict"),
    ("state_dict", "module.", "DistributedDataParallel checkpoint"),
)
HEAD_KEYS = ("fc.",)  # classifier / MoCo MLP head: not part of the trunk


class WeightsError(ConfigError):
    """The file is not a ResNet encoder in a known layout; the message lists what was found."""


def _read(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a trusted local checkpoint that pickles non-tensor objects
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001
            raise WeightsError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None


def resolve_path(path: str) -> str:
    """A run directory means its ``backbone.pth`` (else its newest ``checkpoints/*.pt``)."""
    if not os.path.exists(path):
        raise WeightsError(f"model.weights: '{path}' does not exist")
    if not os.path.isdir(path):
        return path
    exported = os.path.join(path, "backbone.pth")
    if os.path.isfile(exported):
        return exported
    checkpoints = sorted(glob.glob(os.path.join(path, "checkpoints", "*.pt")))
    if checkpoints:
        return checkpoints[-1]
    found = ", ".join(sorted(os.listdir(path))[:20]) or "nothing"
    raise WeightsError(f"model.weights: directory '{path}' has no backbone.pth and no checkpoints/*.pt "
                       f"(found: {found}); pass the encoder file itself")


def _extract(obj: Any) -> Optional[Tuple[Dict[str, Tensor], str]]:
    if not isinstance(obj, Mapping):
        return None
    for container, prefix, kind in LAYOUTS:
        states = obj.get(container) if container else obj
        if not isinstance(states, Mapping) or f"{prefix}conv1.weight" not in states:
            continue
        trunk = {k[len(prefix):]: v for k, v in states.items()
                 if isinstance(k, str) and k.startswith(prefix) and isinstance(v, Tensor)}
        trunk = {k: v for k, v in trunk.items() if not k.startswith(HEAD_KEYS)}
        return trunk, kind
    return None


def _average_split_bn(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Split-BN running stats have shape (splits*C,): average over splits (as export_state_dict does)."""
    out = dict(state)
    for key, value in state.items():
        if not key.endswith(("running_mean", "running_var")):
            continue
        weight = state.get(key.rsplit(".", 1)[0] + ".weight")
        if weight is not None and value.numel() != weight.numel() and value.numel() % weight.numel() == 0:
            out[key] = value.view(-1, weight.numel()).mean(0)
    return out


def _describe(obj: Any) -> str:
    if not isinstance(obj, Mapping):
        return f"a {type(obj).__name__}"
    parts = []
    for key, value in list(obj.items())[:8]:
        if isinstance(value, Mapping):
            inner = [str(k) for k in list(value)[:4]]
            parts.append(f"'{key}': {{{', '.join(inner)}{', ...' if len(value) > 4 else ''}}}")
        else:
            parts.append(f"'{key}'")
    return "a dict with " + ", ".join(parts)


def load_encoder_state(path: str) -> Tuple[Dict[str, Tensor], str, bool]:
    """``(state_dict, arch, cifar_stem)`` of the encoder in ``path``.

    Accepts an ssmix ``backbone.pth``, an ssmix run directory, an ssmix training checkpoint (trunk under
    ``model`` / ``method.backbone.``), a torchvision ResNet checkpoint (``fc`` dropped) or an official MoCo
    checkpoint (``state_dict`` / ``module.encoder_q.``; key encoder, queue and MLP head dropped).
    """
    file_path = resolve_path(path)
    obj = _read(file_path)
    found = _extract(obj)
    if found is None:
        raise WeightsError(
            f"{file_path}: no ResNet encoder found; expected a backbone.pth state_dict (conv1.weight, ...), an "
            f"ssmix checkpoint ('model' with method.backbone.*), a torchvision state_dict or a MoCo checkpoint "
            f"('state_dict' with module.encoder_q.*). Found {_describe(obj)}"
        )
    state, kind = found
    state = _average_split_bn(state)
    guessed = infer_arch(state)
    if guessed is None:
        raise WeightsError(f"{file_path}: the {kind} has no ResNet stem (conv1.weight)")
    arch, cifar_stem = guessed
    try:
        load_torchvision_resnet(state, arch, cifar_stem, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{file_path}: the {kind} does not load into torchvision {arch}: {exc}") from None
    return state, arch, cifar_stem
