"""Config schemas of the SAMix mixers (defaults: docs/algorithm.md §11 and §6.2).

``samix_i`` (instance level), ``samix_c`` (cluster level, ODC pseudo-labels) and ``samix_p`` (a frozen,
pre-trained Mixer). The shared encoder-mask options live in :class:`MaskPostConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ssmix.config import BetaMixConfig, ConfigError, LabelledMixConfig, register_mix_config


@dataclass
class MaskPostConfig(BetaMixConfig):
    """Lambda sampling (``alpha``, > 0: SAMix always mixes) and post-processing of the encoder (bb) mask
    (docs/algorithm.md §3.6): what SAMix-I/C and SAMix-P share."""

    lam_margin: float = 0.1  # lam <= margin or 1 - lam <= margin -> vanilla mixup mask
    mask_smooth: float = 0.0  # 0 = off; else Gaussian sigma ~ U(0.5, mask_smooth) px
    mask_adjust: str = "auto"  # none | auto | auto_label (SAMix-C: same-cluster pairs get vanilla mixup)
    mean_margin: float = 0.05  # "auto": per-sample mask mean brought within lam +- mean_margin

    def validate_alpha(self) -> None:
        """Raise :class:`ConfigError` unless ``alpha > 0`` (0, no mixing, would leave the Mixer nothing to learn)."""
        if self.alpha <= 0:
            raise ConfigError(f"mix.alpha: SAMix needs a Beta concentration > 0, got {self.alpha}")


@register_mix_config("samix_i")
@dataclass
class SAMixIConfig(MaskPostConfig):
    """SAMix-I: the Mixer trained by BCE(two sources) + eta * mixup infoNCE + mask loss (docs/algorithm.md §4.1)."""

    type: str = "samix_i"
    # Mixer architecture (docs/algorithm.md §3.2-3.4)
    feature_channels: int = 0  # stage-3 width; 0 = the backbone's (256 for resnet18/34, 1024 for resnet50)
    reduction: int = 2  # query/key width = feature_channels / reduction
    rescale_k: float = 1.0  # lambda rescale rho_k; -1 disables
    dropout: float = 0.0  # after the value net (0.1 in the ImageNet dev configs)
    # ours: s_a = sigmoid(logit(lam) - content) (docs/algorithm.md §3.2); off = reference
    lam_offset: bool = False
    # ours, with lam_offset: the content map minus its per-image mean, so the mask's mean stays near lambda
    # whatever the content's level and only its spatial pattern moves pixels (docs/algorithm.md §3.3)
    centre_content: bool = False
    # ours: std of the query / key weights at init; 0.01 = the reference's, as every Mixer weight
    # (docs/algorithm.md §3.5 item 4). Larger starts the attention away from uniform (docs/algorithm.md §3.3)
    qk_init_std: float = 0.01
    # ours: std of the value net's output conv at init (0.01 = the reference's). With qk_init_std 0.1, 0.1
    # starts the mask with spatial structure, 1.0 near-binary; in training neither lasts (docs/algorithm.md §3.3)
    value_init_std: float = 0.01
    # Mixer losses (docs/algorithm.md §3.7, §4.1)
    mask_loss: str = "l2"  # l2 (SSL dev configs) | l1 (SL configs)
    mask_loss_margin: float = 0.1
    # batch (docs/algorithm.md §3.7, the code) | sample: l_mu on each image's mask mean
    mask_mean: str = "batch"
    mask_loss_weight: float = 0.1  # beta at step 0, decays to 0
    mask_loss_decay: str = "linear"  # linear (paper) | cosine (code)
    eta: float = 0.5  # weight of the global term
    eta_schedule: str = "constant"  # constant (paper) | cosine (code: 0.5 -> 0)
    # none | interpolation | extrapolation | both (docs/algorithm.md §4.1 caveat 2)
    latent_pos_extend: str = "none"
    # true: mb mask from the features of pi_bb(pi_mb(i)) as the code (docs/algorithm.md §9.1)
    leaky_pairing: bool = False
    # Mixer optimizer group (docs/algorithm.md §6.2, §11)
    mixer_lr: float = 0.005
    mixer_momentum: float = 0.9
    mixer_weight_decay: float = 1e-4
    mixer_warmup_epochs: float = 10.0
    mixer_min_lr: float = 1e-4


@register_mix_config("samix_c")
@dataclass
class SAMixCConfig(SAMixIConfig, LabelledMixConfig):
    """SAMix-C: pBCE + eta * mixup CE over ODC clusters through a frozen cluster head
    (docs/algorithm.md §4.2, §5.5)."""

    type: str = "samix_c"
    embed_dim: int = 0  # width of the method's target embedding (cluster head input); 0 = the method's
    local: str = "pbce"  # pbce (paper) | bce (instance two-source BCE, as the code)
    head_temperature: float = 0.1  # cosine cluster head: logits = cos(z, prototype) / t
    head_lr: float = 0.05
    head_momentum: float = 0.0
    head_weight_decay: float = 1e-4


@register_mix_config("samix_p")
@dataclass
class SAMixPConfig(MaskPostConfig):
    """SAMix-P: a frozen Mixer and its frozen stage 0-3 encoder loaded from ``checkpoint`` (docs/algorithm.md §2.4)."""

    type: str = "samix_p"
    checkpoint: str = ""  # mixer.pt written by ssmix.mixers.samix.export_mixer


def _choice(cfg: object, key: str, options: Sequence[str]) -> None:
    value = getattr(cfg, key)
    if value not in options:
        raise ConfigError(f"mix.{key}: expected one of {', '.join(options)}, got '{value}'")


def validate_mask_post(cfg: MaskPostConfig, labels: bool) -> None:
    """Raise :class:`ConfigError` naming the ``mix.*`` key of a bad post-processing option (``alpha``
    again: the config refused a bad one when it was made, but fields can be set since)."""
    cfg.validate_alpha()
    if not 0 <= cfg.lam_margin < 0.5:
        raise ConfigError(f"mix.lam_margin: expected a value in [0, 0.5), got {cfg.lam_margin}")
    if cfg.mask_smooth != 0 and cfg.mask_smooth <= 0.5:
        raise ConfigError(
            f"mix.mask_smooth: 0 (off) or the largest sigma in px (> 0.5), got {cfg.mask_smooth}"
        )
    if cfg.mean_margin < 0:
        raise ConfigError(f"mix.mean_margin: expected >= 0, got {cfg.mean_margin}")
    _choice(cfg, "mask_adjust", ("none", "auto", "auto_label"))
    if cfg.mask_adjust == "auto_label" and not labels:
        raise ConfigError("mix.mask_adjust: 'auto_label' needs pseudo-labels; use mix.type=samix_c or 'auto'")


def validate_samix(cfg: SAMixIConfig, labels: bool) -> None:
    """Checks shared by SAMix-I and SAMix-C."""
    validate_mask_post(cfg, labels)
    if cfg.feature_channels < 2 or cfg.feature_channels % 2:
        raise ConfigError(
            f"mix.feature_channels: expected an even width (256 or 1024), got {cfg.feature_channels}"
        )
    if cfg.reduction < 1 or cfg.feature_channels % cfg.reduction:
        raise ConfigError(
            f"mix.reduction: must divide mix.feature_channels={cfg.feature_channels}, got {cfg.reduction}"
        )
    if not (cfg.rescale_k == -1 or cfg.rescale_k >= 0):
        raise ConfigError(f"mix.rescale_k: -1 (off) or >= 0 (monotone rescale), got {cfg.rescale_k}")
    if cfg.centre_content and not cfg.lam_offset:
        raise ConfigError("mix.centre_content: needs mix.lam_offset=true (the mask's mean comes from lambda)")
    for key in ("qk_init_std", "value_init_std"):
        if not getattr(cfg, key) > 0:
            raise ConfigError(
                f"mix.{key}: expected a positive std (0.01: the reference), got {getattr(cfg, key)}"
            )
    if not 0 <= cfg.dropout < 1:
        raise ConfigError(f"mix.dropout: expected a probability in [0, 1), got {cfg.dropout}")
    _choice(cfg, "mask_loss", ("l2", "l1"))
    _choice(cfg, "mask_mean", ("batch", "sample"))
    _choice(cfg, "mask_loss_decay", ("linear", "cosine", "constant"))
    _choice(cfg, "eta_schedule", ("constant", "cosine", "linear"))
    _choice(cfg, "latent_pos_extend", ("none", "interpolation", "extrapolation", "both"))
