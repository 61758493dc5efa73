"""Loading frozen encoders from every checkpoint format ssmix meets (docs/algorithm.md §6.3, §12.6 item 1).

Accepted ``weights``:

- ``random`` / ``random:<seed>``: a randomly initialised trunk (seed 0 / ``seed``) - the baseline of
  the quickstart;
- an ssmix run directory: ``backbone.pth`` if present, else ``checkpoints/last.pt``, else the last
  ``checkpoints/*.pt`` by name (the newest ``step_*.pt``); arch and stem come from its ``config.yaml``;
- an exported ``backbone.pth`` (plain torchvision ResNet state_dict without ``fc``);
- an ssmix training checkpoint (``{"model": pretrainer state_dict}``, trunk under ``method.backbone.``,
  split-BN running stats of shape ``(splits*C,)`` averaged over the splits);
- a torchvision state dict (``fc.*`` is dropped) or an official MoCo checkpoint
  (``{"state_dict": ...}`` with the trunk under ``module.encoder_q.``).

Keys are checked strictly: a mismatch raises :class:`WeightsError` listing the missing and unexpected
keys (and shape mismatches). :func:`load_pretrained_encoder` is the loader for files and run directories
(the detection transfer uses it too); :func:`load_encoder` adds ``random``.
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import yaml
from torch import Tensor

from ssmix.config import ConfigError
from ssmix.models.backbones import ARCHS, ResNetTrunk, build_backbone, fold_split_bn_stats, infer_arch
from ssmix.safe_load import UnreadableFileError, UnsafePickleError, safe_torch_load

# Where the online trunk lives, most specific first (first match wins).
TRUNK_PREFIXES = (
    "method.backbone.",
    "module.encoder_q.",
    "encoder_q.",
    "module.backbone.",
    "backbone.",
    "module.",
    "",
)
HEAD_PREFIXES = ("fc.",)  # torchvision classifier / MoCo MLP head: not part of the trunk
_SHOW = 12  # keys listed per kind in an error message


class WeightsError(ConfigError):
    """The weights cannot be loaded into the trunk; the message names the file and the keys."""


@dataclass
class LoadedEncoder:
    """A frozen trunk plus what identifies it (``weights_hash`` keys the feature cache)."""

    backbone: ResNetTrunk
    arch: str
    cifar_stem: bool
    weights_hash: str
    source: str  # the file the weights came from, or "random"
    prefix: str  # the stripped key prefix ("" for plain state dicts)


def state_dict_hash(state_dict: Mapping[str, Tensor]) -> str:
    """SHA-256 over the sorted keys, dtypes, shapes and bytes of a state dict (format-independent)."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        value = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}".encode())
        digest.update(value.view(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()[:24]


def _torch_load(path: str, trust_pickle: bool = False, opt_in: str = "") -> object:
    """:func:`ssmix.safe_load.safe_torch_load` (weights-only unless ``trust_pickle``), its errors as
    :class:`WeightsError`; ``opt_in`` names the entry point's trust switch in the message."""
    try:
        return safe_torch_load(path, "weights", trust_pickle, opt_in)
    except UnsafePickleError as exc:
        raise WeightsError(str(exc)) from None
    except UnreadableFileError as exc:
        raise WeightsError(f"weights: cannot read '{path}' as a tensor checkpoint ({exc.reason})") from None


def _run_config_model(run_dir: str) -> Tuple[Optional[str], Optional[bool]]:
    """``model.arch`` / ``model.cifar_stem`` from ``<run_dir>/config.yaml`` (None where absent)."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        return None, None
    with open(path, encoding="utf-8") as f:
        model = (yaml.safe_load(f) or {}).get("model") or {}
    return model.get("arch"), model.get("cifar_stem")


def resolve_weights_path(weights: str) -> Tuple[str, Optional[str]]:
    """Path of the file to load and the run directory whose ``config.yaml`` describes it (if any)."""
    if os.path.isdir(weights):
        saved = sorted(glob.glob(os.path.join(weights, "checkpoints", "*.pt")))
        for path in [
            os.path.join(weights, "backbone.pth"),
            os.path.join(weights, "checkpoints", "last.pt"),
        ] + saved[-1:]:
            if os.path.isfile(path):
                return path, weights
        found = ", ".join(sorted(os.listdir(weights))[:20]) or "nothing"
        raise WeightsError(
            f"weights: run directory '{weights}' has no backbone.pth and no checkpoints/*.pt "
            f"(found: {found}); pass the encoder file itself"
        )
    if not os.path.isfile(weights):
        raise WeightsError(f"weights: '{weights}' does not exist (not a file or a run directory)")
    parent = os.path.dirname(os.path.abspath(weights))
    run_dir = os.path.dirname(parent) if os.path.basename(parent) == "checkpoints" else parent
    return weights, run_dir if os.path.isfile(os.path.join(run_dir, "config.yaml")) else None


def _describe(obj: Any) -> str:
    """A short picture of a loaded checkpoint's top level, for error messages."""
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


def _tensor_dict(loaded: object, path: str) -> Dict[str, Tensor]:
    """Unwrap ``{"model": ...}`` (ssmix) / ``{"state_dict": ...}`` (MoCo, Lightning) containers."""
    if isinstance(loaded, Mapping) and loaded.get("format") == "ssmix.samix_mixer":
        raise WeightsError(
            f"weights: '{path}' is a SAMix Mixer export (mixer.pt: the Mixer and stages 0-3 of the "
            "trunk that fed it, no layer4), not an encoder; pass the run's backbone.pth or its "
            "directory"
        )
    obj = loaded
    while isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
        if any(k.endswith("conv1.weight") for k in tensors):
            return tensors
        inner = next(
            (obj[k] for k in ("model", "state_dict", "backbone") if isinstance(obj.get(k), Mapping)), None
        )
        if inner is None:
            break
        obj = inner
    raise WeightsError(
        f"weights: '{path}': no ResNet encoder found (no '*conv1.weight' key at the top level or "
        f"under 'model', 'state_dict' or 'backbone'); expected a backbone.pth state dict, an ssmix "
        f"checkpoint ('model' with method.backbone.*), a torchvision state dict or a MoCo checkpoint "
        f"('state_dict' with module.encoder_q.*). Found {_describe(loaded)}"
    )


def extract_trunk_state(
    raw: Mapping[str, Tensor], path: str = "<state dict>"
) -> Tuple[Dict[str, Tensor], str]:
    """Strip the trunk prefix (see :data:`TRUNK_PREFIXES`) and drop head keys; returns (state, prefix)."""
    prefix = next((p for p in TRUNK_PREFIXES if f"{p}conv1.weight" in raw), None)
    if prefix is None:
        found = sorted({k[: -len("conv1.weight")] for k in raw if k.endswith("conv1.weight")})
        raise WeightsError(
            f"weights: '{path}': no trunk under a known prefix ({', '.join(p or '<none>' for p in TRUNK_PREFIXES)}); "
            f"conv1 found under {found or 'no prefix'}"
        )
    state = {k[len(prefix) :]: v for k, v in raw.items() if k.startswith(prefix)}
    return {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}, prefix


def _format_keys(keys: List[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f" ... (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def load_state_strict(backbone: ResNetTrunk, state: Mapping[str, Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a readable error listing missing / unexpected keys."""
    expected = backbone.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or shapes:
        parts = [f"weights: '{source}' does not match {backbone.arch} (cifar_stem={backbone.cifar_stem})"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_format_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_format_keys(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {_format_keys(shapes)}")
        parts.append("fix: pass the right arch=/cifar_stem=, or a checkpoint of this architecture")
        raise WeightsError("; ".join(parts))
    backbone.load_state_dict(state, strict=True)


def random_encoder(arch: str = "resnet18", cifar_stem: bool = False, seed: int = 0) -> LoadedEncoder:
    """A randomly initialised trunk, reproducible through ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = build_backbone(arch, cifar_stem)
    return _frozen(
        LoadedEncoder(backbone, arch, cifar_stem, state_dict_hash(backbone.state_dict()), "random", "")
    )


def _frozen(encoder: LoadedEncoder) -> LoadedEncoder:
    encoder.backbone.eval().requires_grad_(False)
    return encoder


def load_encoder(
    weights: str, arch: Optional[str] = None, cifar_stem: Optional[bool] = None
) -> LoadedEncoder:
    """Build the frozen trunk described by ``weights`` (see the module docstring).

    ``arch`` / ``cifar_stem`` override what the run's config.yaml or :func:`infer_arch` says; for
    ``weights=random`` they default to resnet18 with the ImageNet stem (``model`` defaults).
    """
    if weights == "random" or weights.startswith("random:"):
        _check_arch(arch)
        seed = weights.partition(":")[2]
        if seed and not seed.isdigit():
            raise WeightsError(f"weights: 'random:<seed>' takes a non-negative integer seed, got '{weights}'")
        return random_encoder(arch or "resnet18", bool(cifar_stem), int(seed or 0))
    return load_pretrained_encoder(weights, arch, cifar_stem)


def _check_arch(arch: Optional[str]) -> None:
    if arch is not None and arch not in ARCHS:
        raise WeightsError(f"arch: unknown backbone '{arch}', expected one of {', '.join(ARCHS)}")


def load_pretrained_encoder(
    weights: str,
    arch: Optional[str] = None,
    cifar_stem: Optional[bool] = None,
    *,
    trust_pickle: bool = False,
    opt_in: str = "",
) -> LoadedEncoder:
    """The frozen trunk stored in ``weights``, a file or a run directory (every format of the module
    docstring); ``trust_pickle`` also reads files that pickle arbitrary objects, running their code: for
    files the user made (see :mod:`ssmix.safe_load`)."""
    _check_arch(arch)
    path, run_dir = resolve_weights_path(weights)
    state, prefix = extract_trunk_state(_tensor_dict(_torch_load(path, trust_pickle, opt_in), path), path)
    run_arch, run_stem = _run_config_model(run_dir) if run_dir else (None, None)
    inferred = infer_arch(state) or (None, None)
    arch = arch or run_arch or inferred[0] or "resnet18"
    cifar_stem = next(v for v in (cifar_stem, run_stem, inferred[1], False) if v is not None)
    backbone = build_backbone(arch, bool(cifar_stem))
    state = fold_split_bn_stats(state)
    load_state_strict(backbone, state, path)
    return _frozen(
        LoadedEncoder(backbone, arch, bool(cifar_stem), state_dict_hash(backbone.state_dict()), path, prefix)
    )
