"""Hand-crafted mixers (docs/algorithm.md §8): values against the formulas, mask/lambda consistency, RNG
reproducibility, non-square images and small batches."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmix.config import MIX_SCHEMAS, BetaMixConfig, ConfigError, MixConfig, build_config
from ssmix.mixers import fmix, handcrafted, saliencymix  # noqa: F401  (registration)
from ssmix.mixers.base import MIXERS, LamPair, Mixer, blend
from ssmix.mixers.fmix import fourier_noise
from ssmix.mixers.saliencymix import saliency_peaks
from ssmix.mixup import MixContext, Pairing, derangement, sample_beta

PIXEL_TYPES = ["mixup", "cutmix", "resizemix", "fmix", "saliencymix", "interintra"]
ALL_TYPES = PIXEL_TYPES + ["manifoldmix"]
BOX_TYPES = ["cutmix", "resizemix", "saliencymix", "interintra"]


class Prefix(nn.Module):
    """A tiny stand-in for the online trunk: position k = after k (1x1 conv, 2x avg-pool) stages."""

    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList([nn.Conv2d(3, 4, 1), nn.Conv2d(4, 5, 1), nn.Conv2d(5, 6, 1)])

    def forward(self, x: torch.Tensor, stop: int) -> torch.Tensor:
        for conv in self.stages[:stop]:
            x = F.avg_pool2d(conv(x), 2)
        return x


def make_ctx(n: int, h: int, w: int, labels=None, perm=None, prefix: Prefix | None = None) -> MixContext:
    views = [torch.randn(n, 3, h, w), torch.randn(n, 3, h, w)]
    prefix = prefix or Prefix()
    return MixContext(
        views=views,
        pairing=Pairing(0, 1, derangement(n) if perm is None else perm),
        keys=F.normalize(torch.randn(2, n, 8), dim=-1),
        negatives=None,
        temperature=0.2,
        embed_target=lambda x: F.normalize(x.mean((2, 3)), dim=-1),
        online_prefix=prefix,
        labels=labels,
        num_classes=0 if labels is None else int(labels.max()) + 1,
    )


def mix(mixer, xa, xb, ctx):
    """What the training step does: draw the mixer's lambda, then mix at it."""
    return mixer(xa, xb, mixer.sample_lambda(), ctx)


def build(kind: str, **fields):
    return MIXERS[kind](MIX_SCHEMAS[kind](**fields))


def default_labels(n: int) -> torch.Tensor:
    return torch.arange(n) // 2  # some partners share a label, most do not


def box_of(keep_a: torch.Tensor):
    """Bounding rows/cols [y0, y1) x [x0, x1) of the False region of a (H, W) bool map."""
    rows = (~keep_a).any(1).nonzero().flatten()
    cols = (~keep_a).any(0).nonzero().flatten()
    if rows.numel() == 0:
        return 0, 0, 0, 0
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


# --------------------------------------------------------------------------------------------
# Contract shared by all mixers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_TYPES)
@pytest.mark.parametrize("n,h,w", [(2, 24, 40), (5, 32, 32), (7, 17, 23)])
def test_contract_and_reproducible(kind, n, h, w):
    torch.manual_seed(123)
    ctx = make_ctx(n, h, w, labels=default_labels(n))
    mixer = build(kind)
    xa, xb = ctx.views[0], ctx.views[1][ctx.pairing.perm]
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        outs.append(mix(mixer, xa, xb, ctx))
    first, second = outs
    assert torch.equal(first.x, second.x) and torch.equal(first.lam, second.lam)
    assert first.start == second.start
    assert first.lam.shape == (n,) and first.lam.dtype == torch.float32
    assert bool(((first.lam >= 0) & (first.lam <= 1)).all())
    if first.start == 0:
        assert first.x.shape == xa.shape and first.mask.shape == (n, 1, h, w)
        # the effective lambda is the mean weight of source a over the pixels
        assert torch.allclose(first.mask.float().mean((1, 2, 3)), first.lam, atol=1e-6)
        if kind != "resizemix":  # ResizeMix pastes a resized partner, not the partner's pixels
            assert torch.allclose(first.x, blend(xa, xb, first.mask), atol=1e-6)
    # a different seed gives a different mix
    torch.manual_seed(8)
    third = mix(mixer, xa, xb, ctx)
    assert not (third.start == first.start and torch.equal(third.x, first.x))


def test_configs_load_through_the_schema():
    cfg = build_config({"mix": {"type": "resizemix", "scale_min": 0.2, "use_alpha": True}})
    assert isinstance(cfg.mix, handcrafted.ResizeMixConfig) and cfg.mix.scale_min == 0.2
    assert build_config({"mix": {"type": "interintra", "labels": "dataset"}}).mix.intra_alpha == 0.2
    with pytest.raises(ConfigError, match="mix.layers"):
        build_config({"mix": {"type": "manifoldmix", "layers": [1, 5]}})


def test_bad_settings_fail_clearly():
    with pytest.raises(ConfigError, match="scale_min"):
        MIX_SCHEMAS["resizemix"](scale_min=0.9, scale_max=0.5)
    with pytest.raises(ConfigError, match="mix.layers"):
        MIX_SCHEMAS["manifoldmix"](layers=[])
    with pytest.raises(ConfigError, match="mix.alpha"):
        MIX_SCHEMAS["cutmix"](alpha=-1.0)
    with pytest.raises(ConfigError, match="mix.intra_alpha"):
        MIX_SCHEMAS["interintra"](intra_alpha=-0.5)
    with pytest.raises(ConfigError, match="decay_power"):
        MIX_SCHEMAS["fmix"](decay_power=0)
    with pytest.raises(ValueError, match="same shape"):
        mix(build("cutmix"), torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 9), make_ctx(2, 8, 8))


BETA_TYPES = ["mixup", "cutmix", "resizemix", "manifoldmix", "fmix", "saliencymix"]


@pytest.mark.parametrize("kind", BETA_TYPES)
def test_one_alpha_and_one_check_shared_by_the_beta_mixers(kind):
    """The six mixers with one ``alpha`` share its field, default and check (BetaMixConfig), whichever way
    the config is made; Inter-Intra's two alphas are its own."""
    schema = MIX_SCHEMAS[kind]
    assert issubclass(schema, BetaMixConfig) and schema().alpha == 2.0
    assert [f.name for f in dataclasses.fields(schema)].count("alpha") == 1
    message = "mix.alpha: Beta concentration must be >= 0 (0 disables mixing), got -1.0"
    with pytest.raises(ConfigError, match=re.escape(message)):
        schema(alpha=-1.0)
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config({"mix": {"type": kind, "alpha": -1.0}})
    assert build_config({"mix": {"type": kind, "alpha": 0.0}}).mix.alpha == 0.0  # 0: no mixing
    assert not issubclass(MIX_SCHEMAS["interintra"], BetaMixConfig)


def test_the_base_lambda_needs_a_config_that_declares_alpha():
    torch.manual_seed(0)
    assert build("cutmix", alpha=0.0).sample_lambda() == 1.0
    lam = build("mixup").sample_lambda()
    torch.manual_seed(0)
    assert lam == sample_beta(2.0)

    class NoAlpha(Mixer):
        pass

    with pytest.raises(TypeError, match="NoAlpha: its config MixConfig has no alpha"):
        NoAlpha(MixConfig()).sample_lambda()


def test_interintra_draws_a_named_pair_of_lambdas():
    mixer = build("interintra", labels="dataset")
    torch.manual_seed(0)
    pair = mixer.sample_lambda()
    torch.manual_seed(0)
    assert isinstance(pair, LamPair) and pair == LamPair(inter=sample_beta(2.0), intra=sample_beta(0.2))


def test_fmix_and_saliencymix_take_their_helpers_from_base_and_boxes_not_handcrafted():
    from tests.test_imports import import_graph

    graph = import_graph()
    for name in ("ssmix.mixers.fmix", "ssmix.mixers.saliencymix"):
        assert "ssmix.mixers.handcrafted" not in graph[name], name
    assert "ssmix.mixers.boxes" in graph["ssmix.mixers.saliencymix"]
    assert not hasattr(handcrafted, "Boxes") and not hasattr(handcrafted, "constant_mask")


def test_derangement_is_a_permutation_without_fixed_points():
    torch.manual_seed(0)
    for n in range(2, 10):
        for _ in range(100):
            perm = derangement(n)
            assert torch.equal(perm.sort().values, torch.arange(n))
            assert not bool((perm == torch.arange(n)).any())
    with pytest.raises(ValueError):
        derangement(1)


def test_derangement_is_uniform_over_all_derangements():
    # n = 4 has 9 derangements: 6 four-cycles and 3 double swaps (i <-> j, k <-> l). A single n-cycle
    # construction never yields a swap; a uniform draw gives each of the 9 about 1/9 of the time.
    torch.manual_seed(0)
    draws = 9000
    counts = {}
    for _ in range(draws):
        key = tuple(derangement(4).tolist())
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 9
    swaps = [p for p in counts if all(p[p[i]] == i for i in range(4))]
    assert len(swaps) == 3
    for count in counts.values():
        assert abs(count / draws - 1 / 9) < 0.02  # ~6 standard deviations of a 1/9 frequency


# --------------------------------------------------------------------------------------------
# Mixup
# --------------------------------------------------------------------------------------------


def test_mixup_is_the_convex_combination_with_a_beta_lambda():
    ctx = make_ctx(4, 24, 40)
    xa, xb = ctx.views[0], ctx.views[1][ctx.pairing.perm]
    torch.manual_seed(3)
    lam = sample_beta(2.0)
    torch.manual_seed(3)
    out = mix(build("mixup"), xa, xb, ctx)
    assert torch.allclose(out.lam, torch.full((4,), lam))
    assert torch.allclose(out.x, lam * xa + (1 - lam) * xb, atol=1e-6)
    assert torch.allclose(out.mask, torch.full((4, 1, 24, 40), lam))


# --------------------------------------------------------------------------------------------
# Box mixers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", BOX_TYPES)
@pytest.mark.parametrize("h,w", [(24, 40), (32, 32)])
def test_box_lambda_equals_unmasked_area(kind, h, w):
    n = 5
    labels = torch.arange(n)  # all different: Inter-Intra uses CutMix on every row
    for seed in range(12):
        torch.manual_seed(seed)
        ctx = make_ctx(n, h, w, labels=labels)
        xa = torch.ones(n, 3, h, w)
        xb = -torch.rand(n, 3, h, w) - 0.5  # never equal to 1
        out = mix(build(kind), xa, xb, ctx)
        from_a = (out.x == 1).all(1)  # (N, H, W) pixels still showing source a
        assert torch.equal(from_a, out.mask[:, 0] == 1)
        assert bool(((out.mask == 0) | (out.mask == 1)).all())
        assert torch.allclose(out.lam, from_a.float().mean((1, 2)), atol=1e-6)
        for row in range(n):  # the pasted region is one axis-aligned box
            y0, y1, x0, x1 = box_of(from_a[row])
            assert int((~from_a[row]).sum()) == (y1 - y0) * (x1 - x0)


@pytest.mark.parametrize("kind", ["cutmix", "interintra"])
def test_cutmix_box_size_and_shared_geometry(kind):
    h, w, n = 24, 40, 4
    seen_unclipped = 0
    for seed in range(20):
        ctx = make_ctx(n, h, w, labels=torch.arange(n))
        torch.manual_seed(seed)
        lam0 = sample_beta(2.0)
        torch.manual_seed(seed)
        out = mix(build(kind), torch.ones(n, 3, h, w), torch.zeros(n, 3, h, w), ctx)
        keep = out.mask[:, 0] == 1
        assert bool((keep == keep[:1]).all())  # one geometry shared by the batch
        y0, y1, x0, x1 = box_of(keep[0])
        exp_h, exp_w = int(h * math.sqrt(1 - lam0)), int(w * math.sqrt(1 - lam0))
        assert y1 - y0 <= exp_h and x1 - x0 <= exp_w
        if 0 < y0 and y1 < h and 0 < x0 and x1 < w:
            assert (y1 - y0, x1 - x0) == (exp_h, exp_w)
            seen_unclipped += 1
    assert seen_unclipped > 0


def test_resizemix_pastes_the_whole_resized_partner():
    h, w, n = 24, 40, 3
    for seed in range(10):
        torch.manual_seed(seed)
        ctx = make_ctx(n, h, w)
        xa, xb = ctx.views[0], ctx.views[1][ctx.pairing.perm]
        out = mix(build("resizemix"), xa, xb, ctx)
        y0, y1, x0, x1 = box_of(out.mask[0, 0] == 1)
        assert y1 > y0 and x1 > x0
        resized = F.interpolate(xb, size=(y1 - y0, x1 - x0), mode="nearest")
        assert torch.equal(out.x[:, :, y0:y1, x0:x1], resized)
        keep = (out.mask == 1).expand_as(xa)
        assert torch.equal(out.x[keep], xa[keep])
        assert y1 - y0 <= int(0.8 * h) and x1 - x0 <= int(0.8 * w)


def test_resizemix_use_alpha_keeps_scale_in_range():
    h, w, n = 40, 40, 2
    mixer = build("resizemix", scale_min=0.5, scale_max=0.6, use_alpha=True)
    sides = []
    for seed in range(30):
        torch.manual_seed(seed)
        out = mix(mixer, torch.ones(n, 3, h, w), torch.zeros(n, 3, h, w), make_ctx(n, h, w))
        y0, y1, x0, x1 = box_of(out.mask[0, 0] == 1)
        if 0 < y0 and y1 < h and 0 < x0 and x1 < w:
            sides.append((y1 - y0, x1 - x0))
    assert sides and all(20 <= s <= 24 and s == t for s, t in sides)


# --------------------------------------------------------------------------------------------
# FMix
# --------------------------------------------------------------------------------------------


def test_fmix_mask_is_binary_shared_lowpass_and_sized_by_lambda():
    h, w, n = 24, 40, 3
    size = h * w
    used_ceil = used_floor = False
    agree_fmix, agree_random = [], []
    for seed in range(30):
        ctx = make_ctx(n, h, w)
        torch.manual_seed(seed)
        lam0 = sample_beta(2.0)
        torch.manual_seed(seed)
        out = mix(build("fmix"), ctx.views[0], ctx.views[1], ctx)
        mask = out.mask[:, 0]
        assert bool(((mask == 0) | (mask == 1)).all())
        assert bool((mask == mask[:1]).all())
        ones = int(mask[0].sum())
        assert ones in (math.floor(lam0 * size), math.ceil(lam0 * size))
        used_ceil |= ones == math.ceil(lam0 * size) != math.floor(lam0 * size)
        used_floor |= ones == math.floor(lam0 * size) != math.ceil(lam0 * size)
        assert abs(float(out.lam[0]) - lam0) <= 1.0 / size
        shuffled = mask[0].flatten()[torch.randperm(size)].view(h, w)  # same mean, no structure
        for m, store in ((mask[0], agree_fmix), (shuffled, agree_random)):
            store.append(
                float(
                    torch.cat([(m[1:] == m[:-1]).flatten(), (m[:, 1:] == m[:, :-1]).flatten()]).float().mean()
                )
            )
    assert used_ceil and used_floor
    assert sum(agree_fmix) / 30 > 0.85
    assert sum(agree_fmix) / 30 > sum(agree_random) / 30 + 0.2


@pytest.mark.parametrize("h,w", [(23, 41), (32, 32), (1, 7)])
def test_fourier_noise_shape_and_range(h, w):
    torch.manual_seed(0)
    noise = fourier_noise(h, w, 3.0)
    assert noise.shape == (h, w)
    if h * w > 1:
        assert float(noise.min()) == 0.0 and abs(float(noise.max()) - 1.0) < 1e-6


# --------------------------------------------------------------------------------------------
# SaliencyMix
# --------------------------------------------------------------------------------------------


def test_saliencymix_box_is_centred_on_the_partners_salient_blob():
    torch.manual_seed(0)
    n, h, w = 4, 32, 48
    centres = torch.tensor([[8, 10], [20, 36], [16, 24], [25, 6]])
    ys, xs = torch.arange(h)[:, None], torch.arange(w)[None, :]
    xb = 0.1 * torch.randn(n, 3, h, w)
    for row, (cy, cx) in enumerate(centres.tolist()):
        xb[row] += 3 * torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * 1.5**2))
    peak_y, peak_x = saliency_peaks(xb)
    assert bool(((peak_y - centres[:, 0]).abs() <= 1).all() and ((peak_x - centres[:, 1]).abs() <= 1).all())
    xa = torch.full((n, 3, h, w), 5.0)
    ctx = make_ctx(n, h, w)
    for seed in range(5):
        torch.manual_seed(seed)
        lam0 = sample_beta(2.0)
        torch.manual_seed(seed)
        out = mix(build("saliencymix"), xa, xb, ctx)
        box_h, box_w = int(h * math.sqrt(1 - lam0)), int(w * math.sqrt(1 - lam0))
        for row in range(n):
            keep = out.mask[row, 0] == 1
            cy, cx = int(peak_y[row]), int(peak_x[row])
            assert not bool(keep[cy, cx])  # the salient pixel is pasted
            y0, y1, x0, x1 = box_of(keep)
            assert (y0, y1) == (max(cy - box_h // 2, 0), min(cy - box_h // 2 + box_h, h))
            assert (x0, x1) == (max(cx - box_w // 2, 0), min(cx - box_w // 2 + box_w, w))
            assert torch.equal(out.x[row, :, y0:y1, x0:x1], xb[row, :, y0:y1, x0:x1])
        assert len({box_of(out.mask[r, 0] == 1) for r in range(n)}) > 1  # one box per pair


# --------------------------------------------------------------------------------------------
# ManifoldMix
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2])
def test_manifoldmix_mixes_prefix_maps_with_gradient(k):
    torch.manual_seed(0)
    prefix = Prefix()
    ctx = make_ctx(4, 24, 40, prefix=prefix)
    xa, xb = ctx.views[0].requires_grad_(), ctx.views[1][ctx.pairing.perm].detach().requires_grad_()
    torch.manual_seed(5)
    lam = sample_beta(2.0)
    torch.manual_seed(5)
    out = mix(build("manifoldmix", layers=[k]), xa, xb, ctx)
    assert out.start == k and out.mask is None
    assert torch.allclose(out.lam, torch.full((4,), lam))
    expected = lam * prefix(xa, k) + (1 - lam) * prefix(xb, k)
    assert out.x.shape == expected.shape == (4, 3 + k, 24 >> k, 40 >> k)
    assert torch.allclose(out.x, expected, atol=1e-6)
    out.x.square().sum().backward()
    for index, conv in enumerate(prefix.stages):
        assert (conv.weight.grad is not None) == (index < k)
    assert float(prefix.stages[0].weight.grad.abs().sum()) > 0
    assert float(xa.grad.abs().sum()) > 0 and float(xb.grad.abs().sum()) > 0  # through both prefixes


def test_manifoldmix_draws_every_listed_position():
    ctx = make_ctx(3, 16, 16)
    mixer = build("manifoldmix")
    starts = set()
    for seed in range(30):
        torch.manual_seed(seed)
        out = mix(mixer, ctx.views[0], ctx.views[1], ctx)
        starts.add(out.start)
        if out.start == 0:
            assert torch.allclose(out.x, blend(ctx.views[0], ctx.views[1], out.mask), atol=1e-6)
    assert starts == {0, 1, 2}


# --------------------------------------------------------------------------------------------
# Inter-Intra
# --------------------------------------------------------------------------------------------


def test_interintra_mixup_within_clusters_cutmix_across():
    n, h, w = 6, 24, 40
    perm = torch.roll(torch.arange(n), -1)  # partner of n is n + 1
    labels = torch.tensor([0, 0, 1, 2, 2, -1])  # same: rows 0 and 3; row 5 unknown -> CutMix
    same = torch.tensor([True, False, False, True, False, False])
    mixer = build("interintra", intra_alpha=1.0)
    assert mixer.needs_labels
    xa, xb = torch.ones(n, 3, h, w), torch.zeros(n, 3, h, w)
    fractional = 0
    for seed in range(10):
        torch.manual_seed(seed)
        out = mix(mixer, xa, xb, make_ctx(n, h, w, labels=labels, perm=perm))
        lam_intra = out.lam[same]
        assert torch.equal(lam_intra, lam_intra[:1].expand(2))
        # same-cluster rows: the convex combination lam xa + (1 - lam) xb everywhere
        assert torch.allclose(out.x[same], lam_intra[:, None, None, None].expand(2, 3, h, w))
        fractional += int(0 < float(lam_intra[0]) < 1)
        # other rows: a binary box paste, the same box for all of them
        cut = out.x[~same]
        assert bool(((cut == 0) | (cut == 1)).all()) and bool((cut == cut[:1]).all())
        assert torch.allclose(out.lam[~same], cut.mean((1, 2, 3)))
    assert fractional == 10


def test_interintra_without_labels_fails_clearly():
    ctx = make_ctx(4, 16, 16)
    with pytest.raises(ValueError, match="ctx.labels is None"):
        mix(build("interintra"), ctx.views[0], ctx.views[1], ctx)


def test_mask_statistics_tell_structured_flat_and_degenerate_masks_apart():
    from ssmix.mixers.base import mask_statistics

    flat = torch.full((4, 1, 8, 8), 0.4)  # Mixup: no spatial structure, nothing saturated
    degenerate = torch.tensor([0.0, 1.0, 0.0, 1.0]).view(4, 1, 1, 1).expand(4, 1, 8, 8)  # all-0 / all-1
    half = torch.zeros(4, 1, 8, 8)
    half[..., :4] = 1.0  # CutMix-like: left half from a, every image alike
    s = {
        name: mask_statistics(m, "")
        for name, m in (("flat", flat), ("degenerate", degenerate), ("half", half))
    }
    assert s["flat"] == {"within_var": 0.0, "between_var": 0.0, "saturated": 0.0}
    assert s["degenerate"]["within_var"] == 0.0 and s["degenerate"]["between_var"] == pytest.approx(0.25)
    assert s["degenerate"]["saturated"] == 1.0
    assert s["half"]["within_var"] == pytest.approx(0.25) and s["half"]["between_var"] == 0.0
    # law of total variance on a random batch: within + between = variance over every pixel
    m = torch.rand(6, 1, 5, 5)
    r = mask_statistics(m, "mixer_mask_")
    total = float(m.flatten().var(unbiased=False))
    assert r["mixer_mask_within_var"] + r["mixer_mask_between_var"] == pytest.approx(total, rel=1e-5)
    assert r["mixer_mask_saturated"] == pytest.approx(float(((m < 0.05) | (m > 0.95)).float().mean()))
