"""SAMix-P: a frozen, pre-trained Mixer plus the frozen encoder stages that feed it (docs/algorithm.md §2.4).

``export_mixer`` writes ``mixer.pt`` after a SAMix-I/C run::

    {"format": "ssmix.samix_mixer", "version": 1,
     "mixer": MixerNet state_dict, "trunk": ResNetTrunk state_dict without layer4 (stages 0..3),
     "meta": {"arch", "cifar_stem", "map_at": 3, "mixer": MixerNet.hparams(), ...caller's meta}}

:class:`SAMixP` loads it, keeps both parts in eval mode without gradient (no parameter groups), computes
the stage-3 maps of both sources itself and mixes like the bb path of SAMix-I. It has no losses.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ssmix.config import ConfigError
from ssmix.mixers.base import Mixer, register_mixer
from ssmix.mixers.samix.configs import SAMixPConfig, validate_mask_post
from ssmix.mixers.samix.encoder_mix import mix_for_encoder
from ssmix.mixers.samix.mixer_net import MixerNet
from ssmix.mixup import MixContext, MixedInputs
from ssmix.models.backbones import ResNetTrunk, export_state_dict

FORMAT = "ssmix.samix_mixer"
VERSION = 1
MAP_AT = 3  # the Mixer reads stage-3 maps (docs/algorithm.md §3.1)


def _checkpoint_file(path: str) -> str:
    return path if path.endswith(".pt") else os.path.join(path, "mixer.pt")


def export_mixer(
    path: str, mixer_net: MixerNet, trunk: ResNetTrunk, meta: Optional[Dict[str, Any]] = None
) -> str:
    """Save the Mixer and the stages 0..3 of ``trunk`` (the target-branch encoder that fed it during
    training) to ``path`` (a ``.pt`` file, or a directory that receives ``mixer.pt``). ``meta`` (e.g.
    ``{"image_size": 96}``) is stored alongside. Returns the file written."""
    file = _checkpoint_file(path)
    os.makedirs(os.path.dirname(os.path.abspath(file)), exist_ok=True)
    trunk_state = {k: v.cpu() for k, v in export_state_dict(trunk).items() if not k.startswith("layer4.")}
    info = dict(meta or {})
    info.update(
        {"arch": trunk.arch, "cifar_stem": trunk.cifar_stem, "map_at": MAP_AT, "mixer": mixer_net.hparams()}
    )
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "mixer": {k: v.detach().cpu() for k, v in mixer_net.state_dict().items()},
        "trunk": trunk_state,
        "meta": info,
    }
    torch.save(payload, file)
    return file


def load_mixer(
    path: str, map_location: str | torch.device = "cpu"
) -> Tuple[MixerNet, ResNetTrunk, Dict[str, Any]]:
    """Load an exported Mixer: (MixerNet, ResNetTrunk truncated after stage 3, meta), both frozen and in
    eval mode. Raises ``FileNotFoundError``/``ValueError`` naming the file and the fix."""
    file = _checkpoint_file(path)
    fix = "export one with ssmix.mixers.samix.export_mixer after a samix_i / samix_c run"
    if not os.path.isfile(file):
        raise FileNotFoundError(f"mix.checkpoint: SAMix-P Mixer checkpoint not found: {file} ({fix})")
    try:
        payload = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as exc:  # a file torch cannot read at all
        raise ValueError(
            f"mix.checkpoint: {file} is not a readable torch checkpoint ({exc}); {fix}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(
            f"mix.checkpoint: {file} is not a SAMix Mixer checkpoint (expected format '{FORMAT}'); {fix}"
        )
    if payload.get("version") != VERSION:
        raise ValueError(
            f"mix.checkpoint: {file} has format version {payload.get('version')}, expected {VERSION}"
        )
    meta = payload["meta"]
    try:
        net = MixerNet(**meta["mixer"])
        net.load_state_dict(payload["mixer"])
        trunk = ResNetTrunk(meta["arch"], cifar_stem=meta["cifar_stem"])
        missing, unexpected = trunk.load_state_dict(payload["trunk"], strict=False)
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise ValueError(
            f"mix.checkpoint: {file} does not match the SAMix Mixer / trunk layout: {exc}"
        ) from None
    missing = [k for k in missing if not k.startswith("layer4.")]
    if missing or unexpected:
        raise ValueError(
            f"mix.checkpoint: {file}: trunk keys missing {missing[:5]} / unexpected {unexpected[:5]}"
        )
    if net.in_channels != trunk.stage_channels[MAP_AT]:
        raise ValueError(
            f"mix.checkpoint: {file}: Mixer expects {net.in_channels} channels but the "
            f"{meta['arch']} trunk gives {trunk.stage_channels[MAP_AT]} at stage {MAP_AT}"
        )
    trunk.layer4 = nn.Identity()  # never run: the Mixer reads stage 3
    for part in (net, trunk):
        part.requires_grad_(False).eval()
    return net, trunk, meta


@register_mixer("samix_p")
class SAMixP(Mixer):
    """A frozen pre-trained Mixer that computes its own stage-3 maps (no feature maps from the method)."""

    needs_feature_maps = None

    def __init__(self, cfg: SAMixPConfig) -> None:
        super().__init__(cfg)
        validate_mask_post(cfg, labels=False)
        if not cfg.checkpoint:
            raise ConfigError("mix.checkpoint: SAMix-P needs the path of a mixer.pt from export_mixer")
        self.net, self.trunk, self.meta = load_mixer(cfg.checkpoint)

    def train(self, mode: bool = True) -> "SAMixP":
        """The frozen parts stay in eval mode (BN running statistics, no dropout) whatever ``mode``."""
        super().train(mode)
        self.net.eval()
        self.trunk.eval()
        return self

    def forward(self, xa: Tensor, xb: Tensor, lam: float, ctx: Optional[MixContext]) -> MixedInputs:
        """The bb path of SAMix-I (:func:`mix_for_encoder`) on the stage-3 maps of its own frozen trunk."""
        n = xa.shape[0]
        with torch.no_grad():
            maps = self.trunk.run(torch.cat([xa, xb]), 0, MAP_AT)
        return mix_for_encoder(self.net, self.cfg, xa, xb, (maps[:n], maps[n:]), lam)
