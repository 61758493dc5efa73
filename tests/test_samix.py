"""SAMix Mixer (docs/algorithm.md §3, §4): MixerNet, mask post-processing, losses, gradient isolation, SAMix-P."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmix.config import ConfigError, LabelledMixConfig, build_config
from ssmix.losses.contrastive import mixup_info_nce, two_source_bce
from ssmix.methods.base import frozen_call, l2n
from ssmix.mixers.samix import (
    MixerNet,
    MixerTrainingBatch,
    SAMixC,
    SAMixCConfig,
    SAMixI,
    SAMixIConfig,
    SAMixP,
    SAMixPConfig,
    export_mixer,
    load_mixer,
)
from ssmix.mixers.samix.encoder_mix import mix_for_encoder
from ssmix.mixers.samix.losses import mixup_cross_entropy, pair_bce
from ssmix.mixers.samix.masks import (
    adjust_mask_mean,
    decayed_weight,
    gaussian_smooth,
    lam_margin_fallback,
    mask_loss,
    postprocess_encoder_mask,
    rescale_lambda,
)
from ssmix.mixup import MixContext, Pairing, derangement
from ssmix.models.backbones import ResNetTrunk

N, D, C, IMG, FEAT = 4, 8, 16, 16, 4


class TinyEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, D)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


def make_ctx(
    encoder: nn.Module,
    cross_view: bool = True,
    negatives: bool = True,
    labels=None,
    classes=0,
    class_weights=None,
    step=0,
    total=10,
) -> MixContext:
    views = [torch.randn(N, 3, IMG, IMG), torch.randn(N, 3, IMG, IMG)]
    return MixContext(
        views=views,
        pairing=Pairing(0, 1 if cross_view else 0, derangement(N)),
        keys=l2n(torch.randn(2, N, D)),
        negatives=l2n(torch.randn(32, D)) if negatives else None,
        temperature=0.2,
        embed_target=lambda x: l2n(frozen_call(encoder, x)),
        online_prefix=lambda x, stop: x,
        feature_maps=torch.randn(2, N, C, FEAT, FEAT),
        labels=labels,
        num_classes=classes,
        class_weights=class_weights,
        step=step,
        total_steps=total,
    )


def samix_i(**kw) -> SAMixI:
    return SAMixI(SAMixIConfig(feature_channels=C, **kw))


def samix_c(**kw) -> SAMixC:
    cfg = SAMixCConfig(feature_channels=C, embed_dim=D, **kw)
    cfg.odc.num_clusters = 5
    return SAMixC(cfg)


# -- MixerNet ----------------------------------------------------------------------------------


@pytest.mark.parametrize("channels,image,side", [(256, 32, 8), (256, 64, 4), (256, 96, 6), (1024, 224, 14)])
def test_mixer_net_shapes_and_range(channels, image, side):
    net = MixerNet(channels)
    z = torch.randn(2, 2, channels, side, side)
    s_a, s_b = net.mask_pair(z[0], z[1], 0.3, (image, image))
    assert s_a.shape == s_b.shape == (2, 1, image, image)
    assert s_a.dtype == torch.float32
    assert bool((s_a >= 0).all() and (s_a <= 1).all())
    torch.testing.assert_close(s_a + s_b, torch.ones_like(s_a))
    torch.testing.assert_close(net(z[0], z[1], 0.3, (image, image)), s_a)


def test_mixer_net_parameter_count_r18():
    # docs/algorithm.md §3.8: W_q, W_k 2 (512*128 + 128); value 256*128 + BN 2*128 + 128*1
    net = MixerNet(256)
    assert sum(p.numel() for p in net.parameters()) == 2 * (512 * 128 + 128) + 256 * 128 + 2 * 128 + 128


def test_mixer_net_matches_hand_written_forward():
    torch.manual_seed(0)
    net = MixerNet(C, dropout=0.0).eval()
    for p in net.parameters():  # a non-trivial net (the init is nearly constant)
        nn.init.normal_(p, 0, 0.3)
    z_a, z_b = torch.randn(2, 3, C, 3, 5)
    lam = torch.tensor([0.2, 0.5, 0.9])
    lt = ((4 / 3 * lam**3 - 2 * lam**2 + 2 * lam) / (2 - 2 / 3)).view(3, 1, 1, 1)
    ea, eb = (1 + lt) * z_a, (2 - lt) * z_b
    u = torch.cat([ea, eb], 1)
    q = F.conv2d(u, net.query.weight, net.query.bias).flatten(2)  # (N, d, hw)
    k = F.conv2d(u, net.key.weight, net.key.bias).flatten(2)
    att = torch.softmax(torch.einsum("ndi,ndj->nij", q, k) / math.sqrt(C // 2), dim=-1)
    conv1, bn, _, conv2, _ = net.value
    hidden = F.elu(
        (F.conv2d(eb, conv1.weight) - bn.running_mean[:, None, None])
        / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
        * bn.weight[:, None, None]
        + bn.bias[:, None, None]
    )
    v = F.conv2d(hidden, conv2.weight).flatten(2)  # (N, 1, hw)
    content = torch.einsum("nij,nj->ni", att, v[:, 0]).view(3, 1, 3, 5)
    s_b = torch.sigmoid(F.interpolate(content, size=(12, 20), mode="bilinear", align_corners=False))
    torch.testing.assert_close(net(z_a, z_b, lam, (12, 20)), 1 - s_b, atol=1e-5, rtol=1e-4)


def test_mixer_net_lam_offset_adds_logit_of_lambda():
    # docs/algorithm.md §3.2: s_a = sigmoid(logit(lam) - content), the value net on the ungained z_b.
    # In train mode with one lambda per batch BN removes the gain, so the content equals the reference's.
    torch.manual_seed(0)
    ref = MixerNet(C, dropout=0.0).train()
    for p in ref.parameters():
        nn.init.normal_(p, 0, 0.3)
    net = MixerNet(C, dropout=0.0, lam_offset=True).train()
    net.load_state_dict(ref.state_dict())
    z_a, z_b = torch.randn(2, 8, C, 3, 5)
    lam = 0.3
    content = -torch.logit(ref(z_a, z_b, lam, (12, 20)).double())  # reference: s_a = sigmoid(-content)
    expected = torch.sigmoid(math.log(lam / (1 - lam)) - content).float()
    torch.testing.assert_close(net(z_a, z_b, lam, (12, 20)), expected, atol=1e-5, rtol=1e-4)
    assert net.hparams()["lam_offset"] is True
    with torch.no_grad():  # uniform attention: the content is the mean of v over positions
        for conv in (net.query, net.key):
            conv.weight.zero_()
            conv.bias.zero_()
    net.eval()  # eval mode (SAMix-P, figures): lambda moves the mask by its logit only
    pair = (z_a[:1].expand(3, -1, -1, -1), z_b[:1].expand(3, -1, -1, -1))
    lams = torch.tensor([0.2, 0.5, 0.9])
    content = torch.logit(lams.double()).view(-1, 1, 1, 1) - torch.logit(net(*pair, lams, (12, 20)).double())
    torch.testing.assert_close(content, content[:1].expand(3, -1, -1, -1), atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # a flat content map gives the flat mask lam (Mixup)
        net.value[3].weight.zero_()
    torch.testing.assert_close(net(*pair, lams, (12, 20)), lams.view(-1, 1, 1, 1).expand(3, 1, 12, 20))


def test_mixer_net_train_mode_batchnorm_hides_a_batch_lambda_unless_offset():
    # One lambda per batch and BN in train mode: the value net's (2 - lam~) gain is normalised away, so
    # the mask's mean barely moves with lambda; the offset makes it follow lambda.
    torch.manual_seed(0)
    z_a, z_b = torch.randn(2, 16, 256, 4, 4)
    for offset in (False, True):
        net = MixerNet(256, lam_offset=offset).train()
        with torch.no_grad():
            means = [float(net(z_a, z_b, lam, (16, 16)).mean()) for lam in (0.1, 0.5, 0.9)]
        if offset:
            assert means == pytest.approx([0.1, 0.5, 0.9], abs=0.02)
        else:
            assert max(means) - min(means) < 0.01


def test_mixer_net_init_and_masks_differ_across_pairs():
    net = MixerNet(256)
    conv_weights = torch.cat([m.weight.detach().flatten() for m in net.modules() if isinstance(m, nn.Conv2d)])
    assert abs(float(conv_weights.std()) - 0.01) < 1e-3
    assert float(net.query.bias.detach().abs().sum()) == 0
    assert bool((net.value[1].weight == 1).all())
    z = torch.randn(2, 4, 256, 6, 6)
    with torch.no_grad():
        mask = net(z[0], z[1], 0.5, (96, 96))
    assert float(mask.mean((1, 2, 3)).std()) > 1e-4  # different pairs, different masks
    assert float(mask[0].std()) > 1e-4  # and not constant within a mask


def _attention(net: MixerNet, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    joint = torch.cat([z_a, z_b], dim=1)
    q = net.query(joint).flatten(2).transpose(1, 2)
    return torch.softmax(q @ net.key(joint).flatten(2) / math.sqrt(net.qk_dim), dim=-1)


def test_init_stds_set_only_their_weights_and_start_the_mask_away_from_flat():
    torch.manual_seed(0)
    reference, wide = MixerNet(256), MixerNet(256, qk_init_std=0.1)
    structured = MixerNet(256, qk_init_std=0.1, value_init_std=0.1)
    for net, qk, value in ((reference, 0.01, 0.01), (wide, 0.1, 0.01), (structured, 0.1, 0.1)):
        for conv in (net.query, net.key):
            assert float(conv.weight.detach().std()) == pytest.approx(qk, rel=0.05)
        assert float(net.value[0].weight.detach().std()) == pytest.approx(0.01, rel=0.05)
        assert float(net.value[3].weight.detach().std()) == pytest.approx(value, rel=0.2)
    # post-ReLU stage-3-like maps (positive, shared mean): at 0.01 every query sees uniform attention
    z = torch.randn(2, 8, 256, 4, 4).relu()
    uniform = math.log(16)

    def entropy(net: MixerNet) -> float:
        with torch.no_grad():
            p = _attention(net, z[0], z[1])
        return float(-(p * p.log()).sum(-1).mean()) / uniform

    def within_var(net: MixerNet) -> float:
        with torch.no_grad():
            return float(net(z[0], z[1], 0.5, (16, 16)).flatten(1).var(dim=1).mean())

    assert entropy(reference) > 0.99
    assert entropy(wide) < 0.9
    # the content map is P v: uniform attention flattens it whatever v holds, and a peaked attention over a
    # near-zero v (output conv at 0.01) leaves it near flat; both at 0.1 give the mask spatial structure
    assert within_var(reference) < 1e-5
    assert within_var(structured) > 10 * within_var(wide)
    assert within_var(structured) > 1e-3
    assert samix_i(qk_init_std=0.1).net.qk_init_std == 0.1  # mix.qk_init_std reaches the net
    assert samix_i(value_init_std=0.1).net.value_init_std == 0.1
    for key in ("qk_init_std", "value_init_std"):
        with pytest.raises(ConfigError, match=f"mix.{key}"):
            samix_i(**{key: 0.0})


def test_centre_content_removes_each_images_content_level_and_keeps_its_pattern():
    # docs/algorithm.md §3.3: s_a = sigmoid(logit(lam) - (c - mean_hw c)) with c the upsampled content
    torch.manual_seed(0)
    plain = MixerNet(256, lam_offset=True, qk_init_std=0.1, value_init_std=0.1).train()
    centred = MixerNet(256, lam_offset=True, qk_init_std=0.1, value_init_std=0.1, centre_content=True).train()
    centred.load_state_dict(plain.state_dict())
    z_a, z_b = torch.randn(2, 8, 256, 4, 4).relu()
    lam = 0.3
    content = torch.logit(lam * torch.ones(1)) - torch.logit(plain(z_a, z_b, lam, (16, 16)).double())
    expected = torch.sigmoid(math.log(lam / (1 - lam)) - (content - content.mean(dim=(2, 3), keepdim=True)))
    torch.testing.assert_close(centred(z_a, z_b, lam, (16, 16)), expected.float(), atol=1e-5, rtol=1e-4)
    # the content's level moved whole images off lambda; centred, each image's mean is near lambda
    assert float((plain(z_a, z_b, lam, (16, 16)).mean(dim=(1, 2, 3)) - lam).abs().max()) > 0.1
    assert float((centred(z_a, z_b, lam, (16, 16)).mean(dim=(1, 2, 3)) - lam).abs().max()) < 0.03
    assert centred.hparams()["centre_content"] is True  # travels with an exported Mixer
    assert samix_i(lam_offset=True, centre_content=True).net.centre_content
    with pytest.raises(ConfigError, match="mix.centre_content"):
        samix_i(centre_content=True)


def test_mixer_net_rejects_wrong_channels():
    with pytest.raises(ValueError, match="feature_channels"):
        MixerNet(256)(torch.randn(2, 1024, 6, 6), torch.randn(2, 1024, 6, 6), 0.5, (96, 96))


# -- lambda rescale, post-processing, mask loss, schedules ---------------------------------------


def test_rescale_lambda_spec_values():
    lam = torch.tensor([0.1, 0.25, 0.75, 0.9])
    torch.testing.assert_close(
        rescale_lambda(lam, 1.0), torch.tensor([0.136, 0.297, 0.703, 0.864]), atol=5e-4, rtol=0
    )
    torch.testing.assert_close(
        rescale_lambda(torch.tensor([0.1, 0.25]), 0.25), torch.tensor([0.182, 0.357]), atol=5e-4, rtol=0
    )
    for k in (1.0, 0.25):
        torch.testing.assert_close(
            rescale_lambda(torch.tensor([0.0, 0.5, 1.0]), k), torch.tensor([0.0, 0.5, 1.0])
        )
    assert rescale_lambda(lam, -1) is lam


def test_adjust_mask_mean_brings_each_row_within_margin():
    torch.manual_seed(0)
    mask = torch.rand(6, 1, 8, 8) ** torch.tensor([0.2, 0.5, 1.0, 2.0, 4.0, 1.0]).view(6, 1, 1, 1)
    lam = torch.tensor([0.3, 0.3, 0.5, 0.7, 0.7, 0.52])
    out = adjust_mask_mean(mask, lam, 0.05)
    assert bool(((out.mean((1, 2, 3)) - lam).abs() <= 0.05 + 1e-6).all())
    assert bool((out >= 0).all() and (out <= 1).all())
    mu = mask.mean((1, 2, 3))
    inside = (mu - lam).abs() <= 0.05
    assert bool(inside.any())
    torch.testing.assert_close(out[inside], mask[inside])  # rows already within the margin are kept
    # a mean above lam scales s_a; a mean below lam scales s_b = 1 - s_a
    high = int(torch.nonzero(mu > lam + 0.05)[0])
    torch.testing.assert_close(out[high], mask[high] * lam[high] / mu[high])
    low = int(torch.nonzero(mu < lam - 0.05)[0])
    torch.testing.assert_close(1 - out[low], (1 - mask[low]) * (1 - lam[low]) / (1 - mu[low]))


def test_lam_margin_fallback_gives_constant_mask():
    mask = torch.rand(3, 1, 8, 8)
    lam = torch.tensor([0.05, 0.5, 0.93])
    out = lam_margin_fallback(mask, lam, 0.1)
    assert bool((out[0] == 0.05).all()) and bool((out[2] == 0.93).all())
    torch.testing.assert_close(out[1], mask[1])
    # also through the full post-processing with smoothing and adjusting on
    full = postprocess_encoder_mask(mask, torch.full((3,), 0.95), 0.1, 5.0, "auto", 0.05)
    assert bool((full == 0.95).all())


def test_gaussian_smooth_of_a_delta_is_the_normalised_kernel():
    sigma = 1.3
    size = int(5 * sigma) | 1
    delta = torch.zeros(1, 1, 15, 15)
    delta[0, 0, 7, 7] = 1
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    out = gaussian_smooth(delta, sigma)
    assert out.shape == delta.shape
    torch.testing.assert_close(
        out[0, 0, 7 - size // 2 : 8 + size // 2, 7 - size // 2 : 8 + size // 2], torch.outer(g, g)
    )


def test_auto_label_gives_same_cluster_pairs_the_constant_mask():
    torch.manual_seed(0)
    mask = torch.rand(3, 1, 8, 8)
    lam = torch.full((3,), 0.4)
    out = postprocess_encoder_mask(
        mask, lam, 0.1, 0.0, "auto_label", 0.05, torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3])
    )
    assert bool((out[0] == 0.4).all()) and bool((out[2] == 0.4).all())
    assert float(out[1].std()) > 0.05


@pytest.mark.parametrize("form", ["l1", "l2"])
def test_mask_loss_matches_formula(form):
    mask = torch.tensor([[0.9, 0.8], [0.7, 1.0], [0.1, 0.6], [0.2, 0.3]]).view(2, 1, 2, 2)
    lam = 0.3
    s_b = 1 - mask
    m = float(s_b.mean())  # 0.425
    var = float(((s_b - m) ** 2).mean())
    gap = 1 - m - lam
    l_mu = max(gap**2 - 0.1**2, 0) if form == "l2" else max(abs(gap) - 0.1, 0)
    assert l_mu > 0
    assert float(mask_loss(mask, lam, 0.1, form)) == pytest.approx(l_mu - 2 * var, abs=1e-6)
    assert float(mask_loss(torch.full((2, 1, 2, 2), 0.35), lam, 0.1, form)) == pytest.approx(0.0, abs=1e-7)


def test_mask_loss_per_sample_uses_each_images_mean_and_variance():
    mask = torch.tensor([[0.9, 0.8], [0.7, 1.0], [0.1, 0.6], [0.2, 0.3]]).view(2, 1, 2, 2)
    lam = 0.3
    means = [0.85, 0.3]
    within = [float(((mask[i] - means[i]) ** 2).mean()) for i in range(2)]
    l_mu = (max((0.85 - lam) ** 2 - 0.01, 0) + 0.0) / 2
    assert float(mask_loss(mask, lam, 0.1, "l2", per_sample=True)) == pytest.approx(
        l_mu - 2 * sum(within) / 2, abs=1e-6
    )
    # a whole-image choice (half all-0, half all-1) earns the batch variance 0.25 but no within-image one
    choice = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1).expand(2, 1, 4, 4)
    assert float(mask_loss(choice, 0.5, 0.1, "l2")) == pytest.approx(-0.5)
    assert float(mask_loss(choice, 0.5, 0.1, "l2", per_sample=True)) == pytest.approx(0.25 - 0.01)


def test_decayed_weight_schedules():
    assert [decayed_weight(0.1, s, 100, "linear") for s in (0, 25, 50, 100)] == pytest.approx(
        [0.1, 0.075, 0.05, 0.0]
    )
    expected = [0.1, 0.05 * (1 + math.cos(math.pi / 4)), 0.05, 0.0]
    assert [decayed_weight(0.1, s, 100, "cosine") for s in (0, 25, 50, 100)] == pytest.approx(expected)
    assert decayed_weight(0.5, 70, 100, "constant") == 0.5


# -- losses ------------------------------------------------------------------------------------


def test_targets_are_the_other_view_cross_and_same_view():
    keys = torch.randn(2, N, D)
    perm = torch.tensor([2, 0, 3, 1])
    a, b = Pairing(0, 1, perm).targets(keys)
    torch.testing.assert_close(a, keys[1])
    torch.testing.assert_close(b, keys[0][perm])
    a, b = Pairing(0, 0, perm).targets(keys)
    torch.testing.assert_close(a, keys[1])
    torch.testing.assert_close(b, keys[1][perm])
    a, b = Pairing(0, 1, perm).sources(keys)
    torch.testing.assert_close(a, keys[0])
    torch.testing.assert_close(b, keys[1][perm])
    ia, ib = Pairing(0, 1, perm).target_index(N)
    torch.testing.assert_close(keys.flatten(0, 1)[ia], keys[1])
    torch.testing.assert_close(keys.flatten(0, 1)[ib], keys[0][perm])


def test_two_source_bce_formula():
    z, ka, kb = l2n(torch.randn(3, D)), l2n(torch.randn(3, D)), l2n(torch.randn(3, D))
    lam, t = torch.full((3,), 0.3), 0.2
    ea, eb = torch.exp((z * ka).sum(1) / t), torch.exp((z * kb).sum(1) / t)
    p = ea / (ea + eb)
    torch.testing.assert_close(
        two_source_bce(z, ka, kb, lam, t), -0.3 * torch.log(p) - 0.7 * torch.log(1 - p)
    )


def test_pair_bce_and_mixup_ce_formulas():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 0.0, 1.0]])
    ya, yb = torch.tensor([0, 2, 1]), torch.tensor([1, 0, 1])  # row 2 is a same-cluster pair
    lam = torch.full((3,), 0.7)
    ones = torch.ones(3)
    rows = []
    for n in range(2):
        p = math.exp(logits[n, ya[n]]) / (math.exp(logits[n, ya[n]]) + math.exp(logits[n, yb[n]]))
        rows.append(-0.7 * math.log(p) - 0.3 * math.log(1 - p))
    assert float(pair_bce(logits, ya, yb, lam, ones, ones)) == pytest.approx(sum(rows) / 2, rel=1e-5)
    assert float(pair_bce(logits, ya, ya, lam, ones, ones)) == 0.0
    logp = torch.log_softmax(logits, 1)
    ce = -(0.7 * logp[torch.arange(3), ya] + 0.3 * logp[torch.arange(3), yb])
    assert float(mixup_cross_entropy(logits, ya, yb, lam, ones, ones)) == pytest.approx(
        float(ce.mean()), rel=1e-5
    )
    # class weights: each term is sum_n w_y l_n / sum_n w_y
    w = torch.tensor([0.5, 0.2, 0.3])
    wa, wb = w[ya], w[yb]
    expected = (
        0.7 * (wa * -logp[torch.arange(3), ya]).sum() / wa.sum()
        + 0.3 * (wb * -logp[torch.arange(3), yb]).sum() / wb.sum()
    )
    assert float(mixup_cross_entropy(logits, ya, yb, lam, wa, wb)) == pytest.approx(float(expected), rel=1e-5)


def test_samix_i_losses_match_formula():
    torch.manual_seed(0)
    mixer = samix_i()
    ctx = make_ctx(TinyEncoder(), step=5, total=10)
    z = l2n(torch.randn(N, D))
    perm = derangement(N)
    lam = torch.full((N,), 0.6)
    batch = MixerTrainingBatch(
        lam=lam, pairing=ctx.pairing.with_partners(perm), mask=torch.rand(N, 1, IMG, IMG), z=z
    )
    out = mixer.losses_for(batch, ctx).losses
    ka, kb = ctx.keys[1], ctx.keys[0][perm]
    torch.testing.assert_close(out["mixer_local"], two_source_bce(z, ka, kb, lam, 0.2).mean())
    torch.testing.assert_close(
        out["mixer_global"], 0.5 * mixup_info_nce(z, ka, kb, lam, ctx.negatives, 0.2).mean()
    )
    beta = 0.1 * 0.5  # linear decay at the middle of training
    torch.testing.assert_close(out["mixer_mask"], beta * mask_loss(batch.mask, 0.6, 0.1, "l2"))


def test_samix_c_eta_balanced_loss_matches_formula():
    torch.manual_seed(0)
    mixer = samix_c()
    labels = torch.tensor([0, 1, 1, 3])
    weights = torch.tensor([0.1, 0.3, 0.2, 0.25, 0.15])
    ctx = make_ctx(TinyEncoder(), labels=labels, classes=5, class_weights=weights)
    mixer.head.weight.data.normal_(0, 1.0)
    mixer.refresh_frozen_head()
    perm = torch.tensor([1, 2, 3, 0])  # pairs (0,1) (1,1) (1,3) (3,0): row 1 is same-cluster
    lam = torch.full((N,), 0.4)
    z = l2n(torch.randn(N, D))
    batch = MixerTrainingBatch(
        lam=lam, pairing=ctx.pairing.with_partners(perm), mask=torch.rand(N, 1, IMG, IMG), z=z
    )
    out = mixer.losses_for(batch, ctx).losses
    s = z @ l2n(mixer.head.weight).t() / 0.1  # cosine head, temperature 0.1 (z is already unit-length)
    ya, yb = labels, labels[perm]
    wa, wb = weights[ya], weights[yb]
    rows = torch.arange(N)
    p = torch.exp(s[rows, ya]) / (torch.exp(s[rows, ya]) + torch.exp(s[rows, yb]))
    keep = (ya != yb).float()
    local = (0.4 * (-torch.log(p)) * wa * keep).sum() / (wa * keep).sum() + (
        0.6 * (-torch.log(1 - p)) * wb * keep
    ).sum() / (wb * keep).sum()
    logp = torch.log_softmax(s, 1)
    glob = 0.4 * (wa * -logp[rows, ya]).sum() / wa.sum() + 0.6 * (wb * -logp[rows, yb]).sum() / wb.sum()
    torch.testing.assert_close(out["mixer_local"], local)
    torch.testing.assert_close(out["mixer_global"], 0.5 * glob)


# -- the two batches: graph and gradient isolation -------------------------------------------------


def test_bb_forward_builds_no_graph_and_returns_drawn_lambda():
    torch.manual_seed(0)
    mixer = samix_i()
    ctx = make_ctx(TinyEncoder())
    xa, xb = ctx.views[0], ctx.views[1][ctx.pairing.perm]
    res = mixer(xa, xb, mixer.sample_lambda(), ctx)
    assert res.x.shape == xa.shape and res.mask.shape == (N, 1, IMG, IMG)
    assert not res.x.requires_grad and not res.mask.requires_grad
    assert bool((res.lam == res.lam[0]).all())
    torch.testing.assert_close(res.x, res.mask * xa + (1 - res.mask) * xb)
    assert 0.1 < float(res.lam[0]) < 0.9  # this seed draws no fallback lambda, so "auto" adjusting ran:
    assert bool(((res.mask.mean((1, 2, 3)) - res.lam).abs() <= 0.05 + 1e-6).all())


@pytest.mark.parametrize(
    "cross_view,negatives,extend",
    [(True, True, "none"), (False, False, "none"), (True, True, "both"), (True, False, "interpolation")],
)
def test_samix_i_gradient_reaches_only_the_mixer(cross_view, negatives, extend):
    torch.manual_seed(0)
    encoder = TinyEncoder()
    mixer = samix_i(latent_pos_extend=extend)
    ctx = make_ctx(encoder, cross_view=cross_view, negatives=negatives)
    losses = mixer.aux_losses(ctx, mixer.sample_lambda()).losses
    assert set(losses) == {"mixer_local", "mixer_global", "mixer_mask"}
    assert all(bool(torch.isfinite(v)) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    for name, p in mixer.net.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    assert all(p.grad is None for p in encoder.parameters())
    assert not any(v.requires_grad for v in ctx.views)


def test_leaky_pairing_reads_features_of_the_bb_partner(monkeypatch):
    torch.manual_seed(0)
    mixer = samix_i(leaky_pairing=True)
    ctx = make_ctx(TinyEncoder())
    seen = {}

    def spy(z_a, z_b, lam, size):
        seen["z_b"] = z_b
        return torch.full((N, 1, IMG, IMG), 0.5)

    monkeypatch.setattr(mixer.net, "forward", spy)
    torch.manual_seed(1)
    batch = mixer.mixer_batch(ctx, mixer.sample_lambda())
    torch.testing.assert_close(seen["z_b"], ctx.feature_maps[1][ctx.pairing.perm[batch.pairing.perm]])
    mixer.cfg.leaky_pairing = False
    torch.manual_seed(1)
    batch = mixer.mixer_batch(ctx, mixer.sample_lambda())
    torch.testing.assert_close(seen["z_b"], ctx.feature_maps[1][batch.pairing.perm])


def test_samix_c_gradients_head_and_frozen_twin():
    torch.manual_seed(0)
    encoder = TinyEncoder()
    mixer = samix_c(mask_adjust="auto_label")
    labels = torch.tensor([0, 1, 2, 3])
    ctx = make_ctx(encoder, labels=labels, classes=5, class_weights=torch.full((5,), 0.2))
    with torch.no_grad():
        mixer.head.weight.add_(1.0)
    res = mixer(ctx.views[0], ctx.views[1][ctx.pairing.perm], mixer.sample_lambda(), ctx)  # refreshes psi_off
    assert not res.x.requires_grad
    torch.testing.assert_close(mixer.head_off.weight, mixer.head.weight)
    losses = mixer.aux_losses(ctx, mixer.sample_lambda()).losses
    assert set(losses) == {"mixer_local", "mixer_global", "mixer_mask", "cluster_head"}
    sum(losses.values()).backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in mixer.head.parameters())
    assert all(p.grad is None for p in mixer.head_off.parameters())
    assert all(p.grad is not None for p in mixer.net.parameters())
    assert all(p.grad is None for p in encoder.parameters())
    names = [g["name"] for g in mixer.param_groups()]
    assert names == ["mixer", "cluster_head"]
    head_group = mixer.param_groups()[1]
    assert head_group["lr"] == 0.05 and head_group["momentum"] == 0.0
    assert {id(p) for p in head_group["params"]} == {id(p) for p in mixer.head.parameters()}


def test_samix_c_mixer_gets_no_gradient_from_the_head_loss():
    torch.manual_seed(0)
    mixer = samix_c()
    ctx = make_ctx(TinyEncoder(), labels=torch.tensor([0, 1, 2, 3]), classes=5)
    mixer(ctx.views[0], ctx.views[1][ctx.pairing.perm], mixer.sample_lambda(), ctx)
    mixer.aux_losses(ctx, mixer.sample_lambda()).losses["cluster_head"].backward()
    assert all(p.grad is None for p in mixer.net.parameters())


def test_samix_c_bce_local_and_clear_errors():
    torch.manual_seed(0)
    mixer = samix_c(local="bce")
    ctx = make_ctx(TinyEncoder(), labels=torch.tensor([0, 1, 2, 3]), classes=5)
    assert bool(torch.isfinite(mixer.aux_losses(ctx, mixer.sample_lambda()).losses["mixer_local"]))
    with pytest.raises(ValueError, match="mix.embed_dim: 8"):
        bad = SAMixCConfig(feature_channels=C, embed_dim=16)
        bad.odc.num_clusters = 5
        SAMixC(bad).aux_losses(ctx, 0.5)
    with pytest.raises(ValueError, match="num_clusters: 7"):
        mixer.aux_losses(make_ctx(TinyEncoder(), labels=torch.tensor([0, 1, 2, 3]), classes=7), 0.5)
    with pytest.raises(ValueError, match="ctx.labels is None"):
        mixer.aux_losses(make_ctx(TinyEncoder()), 0.5)


def test_configs_parse_and_validate():
    cfg = build_config({"mix": {"type": "samix_c", "odc": {"num_clusters": 10}, "local": "bce"}})
    assert isinstance(cfg.mix, SAMixCConfig) and isinstance(cfg.mix, LabelledMixConfig)
    assert cfg.mix.odc.num_clusters == 10 and cfg.mix.eta == 0.5 and cfg.mix.mixer_lr == 0.005
    cfg = build_config({"mix": {"type": "samix_i"}})
    assert isinstance(cfg.mix, SAMixIConfig) and cfg.mix.alpha == 2.0 and cfg.mix.rescale_k == 1.0
    # the reference by default
    assert not samix_i().net.lam_offset and samix_i(lam_offset=True).net.lam_offset
    with pytest.raises(ConfigError, match="mix.mask_adjust"):
        samix_i(mask_adjust="auto_label")
    with pytest.raises(ConfigError, match="mix.mask_loss"):
        samix_i(mask_loss="l3")
    with pytest.raises(ConfigError, match="mix.latent_pos_extend"):
        samix_i(latent_pos_extend="expolation")
    group = samix_i().param_groups()[0]
    assert set(group) == {
        "name",
        "params",
        "lars",
        "lr",
        "momentum",
        "weight_decay",
        "warmup_epochs",
        "min_lr",
    }
    assert group["lars"] is False  # plain SGD whatever the encoder optimizer (docs/algorithm.md §6.2)
    assert (group["lr"], group["momentum"], group["warmup_epochs"], group["min_lr"]) == (
        0.005,
        0.9,
        10.0,
        1e-4,
    )


def test_feature_maps_required():
    mixer = samix_i()
    ctx = make_ctx(TinyEncoder())
    ctx.feature_maps = None
    with pytest.raises(ValueError, match="map_at"):
        mixer(ctx.views[0], ctx.views[1], mixer.sample_lambda(), ctx)


# -- SAMix-P ----------------------------------------------------------------------------------


def test_samix_p_round_trip_and_frozen(tmp_path):
    torch.manual_seed(0)
    trunk = ResNetTrunk("resnet18", cifar_stem=True).eval()
    net = MixerNet(256, lam_offset=True).eval()
    for p in net.parameters():
        nn.init.normal_(p, 0, 0.05)
    file = export_mixer(str(tmp_path), net, trunk, {"image_size": 16})
    assert file.endswith("mixer.pt")
    mixer = SAMixP(SAMixPConfig(checkpoint=file, mask_adjust="none", lam_margin=0.0)).train()
    assert not mixer.net.training and not mixer.trunk.training and mixer.net.lam_offset  # hparams travel
    assert mixer.meta["image_size"] == 16 and mixer.meta["arch"] == "resnet18"
    assert mixer.param_groups() == [] and mixer.needs_feature_maps is None
    xa = torch.randn(2, 3, 16, 16, requires_grad=True)
    xb = torch.randn(2, 3, 16, 16)
    torch.manual_seed(3)
    res = mixer(xa, xb, mixer.sample_lambda(), None)
    torch.manual_seed(3)
    lam = float(torch.distributions.Beta(torch.tensor(2.0), torch.tensor(2.0)).sample())
    with torch.no_grad():
        expected = net(trunk.run(xa, 0, 3), trunk.run(xb, 0, 3), lam, (16, 16))
    torch.testing.assert_close(res.mask, expected)
    assert float(res.mask.std()) > 0
    res.x.sum().backward()
    assert xa.grad is not None
    assert all(p.grad is None for p in mixer.parameters())


@pytest.mark.parametrize("post", [{}, {"mask_smooth": 1.5, "lam_margin": 0.3}, {"mask_adjust": "none"}])
def test_samix_i_and_samix_p_share_one_encoder_mask_path(tmp_path, post):
    """The same Mixer on the same stage-3 maps gives SAMix-I's and SAMix-P's bb batch bit for bit, and
    both are :func:`mix_for_encoder` (docs/algorithm.md §2.1 step 5, §3.6)."""
    torch.manual_seed(0)
    trunk = ResNetTrunk("resnet18", cifar_stem=True).eval()
    net = MixerNet(256).eval()
    for p in net.parameters():
        nn.init.normal_(p, 0, 0.05)
    pretrained = SAMixP(SAMixPConfig(checkpoint=export_mixer(str(tmp_path), net, trunk), **post))
    learned = SAMixI(SAMixIConfig(feature_channels=256, **post)).eval()
    learned.net.load_state_dict(net.state_dict())
    xa, xb = torch.randn(3, 3, 16, 16), torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        maps = trunk.run(torch.cat([xa, xb]), 0, 3)
    ctx = MixContext(
        views=[xa, xb],
        pairing=Pairing(0, 1, torch.arange(3)),
        keys=torch.zeros(2, 3, D),
        negatives=None,
        temperature=0.2,
        embed_target=None,
        online_prefix=None,
        feature_maps=torch.stack([maps[:3], maps[3:]]),
    )
    results = []
    for run in (
        lambda lam: learned(xa, xb, lam, ctx),
        lambda lam: pretrained(xa, xb, lam, None),
        lambda lam: mix_for_encoder(net, learned.cfg, xa, xb, (maps[:3], maps[3:]), lam),
    ):
        torch.manual_seed(5)
        results.append(run(learned.sample_lambda()))
    for other in results[1:]:
        for field in ("x", "lam", "mask"):
            assert torch.equal(getattr(results[0], field), getattr(other, field)), field
        assert other.start == 0
    assert float(results[0].mask.std()) > 0


def test_samix_configs_refuse_an_alpha_that_does_not_mix():
    """SAMix's alpha rule (> 0) replaces the base's (>= 0), with its own message, when the config is made
    and again when the mixer is built."""
    for kind in ("samix_i", "samix_c", "samix_p"):
        with pytest.raises(ConfigError, match=r"mix.alpha: SAMix needs a Beta concentration > 0, got 0"):
            build_config({"mix": {"type": kind, "alpha": 0.0}})
    cfg = SAMixIConfig(feature_channels=C)
    cfg.alpha = -1.0
    with pytest.raises(ConfigError, match=r"mix.alpha: SAMix needs a Beta concentration > 0, got -1.0"):
        SAMixI(cfg)


def test_samix_p_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="mix.checkpoint"):
        load_mixer(str(tmp_path / "missing.pt"))
    torch.save({"foo": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a SAMix Mixer checkpoint"):
        load_mixer(str(tmp_path / "other.pt"))
    file = export_mixer(str(tmp_path / "m.pt"), MixerNet(1024), ResNetTrunk("resnet18", cifar_stem=True))
    with pytest.raises(ValueError, match="1024 channels"):
        load_mixer(file)
    with pytest.raises(ConfigError, match="mix.checkpoint"):
        SAMixP(SAMixPConfig())


# -- what SAMix logs: the cluster head against chance, the Mixer's own masks ----------------------------


def test_samix_c_head_logs_accuracy_and_ce_against_chance():
    torch.manual_seed(0)
    mixer = samix_c()
    labels = torch.tensor([0, 1, 2, 3])
    ctx = make_ctx(TinyEncoder(), labels=labels, classes=5)
    with torch.no_grad():  # prototypes = the view-a keys of each row: the head predicts every label
        mixer.head.weight.zero_()
        mixer.head.weight[labels] = ctx.keys[ctx.pairing.view_a]
    aux = mixer.aux_losses(ctx, mixer.sample_lambda())
    assert aux.metrics["cluster_head_acc"] == 1.0
    assert aux.metrics["cluster_head_ce_chance"] == pytest.approx(2 * math.log(5))
    torch.testing.assert_close(
        torch.tensor(aux.metrics["cluster_head_ce"]), aux.losses["cluster_head"].detach()
    )
    # A cosine head over a temperature of 0.1 has logits in [-10, 10]: far from the ~0.01 of a linear
    # head on unit-length inputs, so its CE can move well below chance.
    logits = mixer.head(ctx.keys[ctx.pairing.view_a])
    assert float(logits.abs().max()) <= 10 + 1e-4 and float(logits.max()) > 9
    raw_ce = F.cross_entropy(logits, labels)
    assert float(raw_ce) < 0.5 * math.log(5)


def test_samix_logs_the_mixer_masks_statistics():
    torch.manual_seed(0)
    mixer = samix_i()
    ctx = make_ctx(TinyEncoder())
    aux = mixer.aux_losses(ctx, mixer.sample_lambda())
    assert list(aux.metrics) == ["mixer_mask_within_var", "mixer_mask_between_var", "mixer_mask_saturated"]
