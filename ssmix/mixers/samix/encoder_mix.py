"""The encoder's ("bb") mixed batch from the Mixer's mask (docs/algorithm.md §2.1 step 5, §3.6), the one
path SAMix-I/C (:mod:`ssmix.mixers.samix.samix`) and SAMix-P (:mod:`ssmix.mixers.samix.pretrained`) share;
they differ only in where the stage-3 maps come from (the method's target branch, or SAMix-P's own
frozen trunk).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ssmix.mixers.base import blend
from ssmix.mixers.samix.configs import MaskPostConfig
from ssmix.mixers.samix.masks import postprocess_encoder_mask
from ssmix.mixers.samix.mixer_net import MixerNet
from ssmix.mixup import MixedInputs


def mix_for_encoder(
    net: MixerNet,
    cfg: MaskPostConfig,
    xa: Tensor,
    xb: Tensor,
    maps: Tuple[Tensor, Tensor],
    lam: float,
    labels: Tuple[Optional[Tensor], Optional[Tensor]] = (None, None),
) -> MixedInputs:
    """x = s_a x_a + (1 - s_a) x_b with the mask of ``net`` on the stage-3 ``maps`` of sources a and b at
    lambda_bb = ``lam``, detached and post-processed by ``cfg`` (``labels``: the two sources'
    pseudo-labels, for ``mask_adjust: auto_label``).

    ``lam`` of the result is lambda_bb for every row: the encoder loss weights its two targets by the
    drawn lambda, not by the mask mean (docs/algorithm.md §2.1 step 8)."""
    lam_rows = torch.full((xa.shape[0],), float(lam), device=xa.device)
    with torch.no_grad():
        mask = net(*maps, lam_rows, xa.shape[-2:])
        mask = postprocess_encoder_mask(
            mask, lam_rows, cfg.lam_margin, cfg.mask_smooth, cfg.mask_adjust, cfg.mean_margin, *labels
        )
    return MixedInputs(x=blend(xa, xb, mask), lam=lam_rows, start=0, mask=mask)
