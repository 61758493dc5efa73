"""Mixed-sample grids (ssmix.visualize, CLI ssmix.visualize_mix): the CLI's PNGs, the lambda sweep's pairing and values,
checkpoint loading and the trainer's TensorBoard grid."""

import os

import pytest
import torch
from PIL import Image

from ssmix.data.datasets import DATASET_INFO, dataset_info_from_config
from ssmix.engine.pretrainer import Pretrainer
from ssmix.visualize import training_grid
from ssmix.visualize.figure import grid_cells, mask_cells
from ssmix.visualize.sweep import choose_pairs, lambda_sweep, load_pairs, sweep_lambdas
from ssmix.visualize_mix import build_model, main
from tests.helpers import TINY, moco_overrides, tiny_config

CONFIG = "configs/synthetic/mocov2.yaml"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN, STD = DATASET_INFO["synthetic"].mean, DATASET_INFO["synthetic"].std
# 16 px cells are upscaled 4x to 64 px, 2 px padding: width = 132 (row labels) + cols * 66 + 2, height =
# rows * 66 + 2 plus a 72 px header (3 title lines + 1 label line of 18 px) and, for masks, a 46 px grey bar.


def _model(*overrides):
    cfg = tiny_config(*moco_overrides(), *overrides)
    return cfg, Pretrainer(cfg, cfg.data.num_samples, dataset_info_from_config(cfg.data).num_classes)


def _cli(tmp_path, *args):
    out = str(tmp_path / "grid.png")
    argv = [os.path.join(ROOT, CONFIG), f"out={out}", "pairs=2", "steps=3", *TINY, *moco_overrides(), *args]
    assert main(argv) == 0
    return out


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_cli_writes_a_grid_of_the_expected_size(tmp_path, mix):
    out = _cli(tmp_path, f"mix.type={mix}")
    assert Image.open(out).size == (132 + 5 * 66 + 2, 2 * 66 + 2 + 72)  # columns a, b, 3 lambdas; 2 pairs
    assert not os.path.exists(tmp_path / "grid_masks.png")  # mask figure only for learned Mixers


def test_cli_samix_i_writes_the_mask_figure(tmp_path, capsys):
    out = _cli(tmp_path, "mix.type=samix_i")
    assert Image.open(out).size == (464, 206)
    assert Image.open(tmp_path / "grid_masks.png").size == (464, 6 * 66 + 2 + 72 + 46)  # 3 rows per pair
    assert "untrained" in capsys.readouterr().out


def test_cli_rejects_bad_options(tmp_path, capsys):
    assert main([os.path.join(ROOT, CONFIG), "pairs=two", *TINY]) == 2
    assert "pairs=two: expected an integer" in capsys.readouterr().err
    assert main([os.path.join(ROOT, CONFIG), f"out={tmp_path}/g.png", *TINY]) == 2  # mix.type: none
    assert "mix.type" in capsys.readouterr().err


def test_mixup_sweep_columns_follow_the_formula_and_end_at_the_sources():
    cfg, model = _model("mix.type=mixup")
    pairs = load_pairs(cfg, "train", 3)
    sweep = lambda_sweep(model, pairs, sweep_lambdas(5))
    cells = grid_cells(sweep, MEAN, STD)
    assert cells.shape == (3, 7, 3, 16, 16) and cells.min() >= 0 and cells.max() <= 1
    a, b = cells[:, 0], cells[:, 1]
    assert torch.equal(cells[:, 2], b)  # lambda = 0: xb + 0 * (xa - xb) is xb bit for bit
    # lambda = 1: Mixup's blend xb + 1 * (xa - xb) rounds, so equal up to float32 rounding
    assert torch.allclose(cells[:, 6], a, atol=1e-6, rtol=0)
    for k, lam in enumerate([0.0, 0.25, 0.5, 0.75, 1.0]):
        expected = (lam * pairs.xa + (1 - lam) * pairs.xb) * torch.tensor(STD).view(3, 1, 1) + torch.tensor(
            MEAN
        ).view(3, 1, 1)
        assert torch.allclose(cells[:, 2 + k], expected.clamp(0, 1), atol=1e-5)
    assert torch.equal(sweep.masks[1], torch.full_like(sweep.masks[1], 0.25))


def test_cutmix_sweep_is_exact_at_lambda_one_and_pastes_b_at_the_same_centre():
    cfg, model = _model("mix.type=cutmix")
    sweep = lambda_sweep(model, load_pairs(cfg, "train", 2), [1.0, 0.5, 0.25])
    assert torch.equal(sweep.mixed[0], sweep.xa)  # a 0 x 0 box
    box_half, box_quarter = sweep.masks[1] == 0, sweep.masks[2] == 0  # pixels pasted from b
    assert 0 < int(box_half.sum()) < int(box_quarter.sum())
    assert bool((~box_half | box_quarter).all())  # same centre in every column: the box only grows
    inside = box_half.expand_as(sweep.xb)
    assert torch.equal(sweep.mixed[1][inside], sweep.xb[inside])


def test_interintra_reads_the_partners_label():
    # 2 classes (label = index % 2): same-label pairs get Mixup (constant mask), the others CutMix.
    cfg, model = _model("mix.type=interintra", "mix.labels=dataset", "data.num_classes=2", "seed=1")
    pairs = load_pairs(cfg, "train", 6)
    same = pairs.labels_a == pairs.labels_b
    assert 0 < int(same.sum()) < 6  # both kinds in the batch (seed 1)
    sweep = lambda_sweep(model, pairs, [0.5])
    mask = sweep.masks[0]
    constant = (mask == 0.5).flatten(1).all(1)
    binary = ((mask == 0) | (mask == 1)).flatten(1).all(1)
    assert torch.equal(constant, same) and torch.equal(binary, ~same)


def test_samix_sweep_mixes_each_pair_with_its_own_partner_through_the_mask():
    cfg, model = _model("mix.type=samix_i")
    with torch.no_grad():  # a Mixer with spatially varying output
        model.mixing.mixer.net.value[0].weight.normal_(0, 1.0)
        model.mixing.mixer.net.value[3].weight.normal_(0, 1.0)
    pairs = load_pairs(cfg, "train", 2)
    sweep = lambda_sweep(model, pairs, [0.0, 0.5, 1.0])
    assert sweep.learned and sweep.masks.shape == sweep.raw_masks.shape == (3, 2, 1, 16, 16)
    for k in range(3):
        expected = pairs.xb + sweep.masks[k] * (pairs.xa - pairs.xb)
        assert torch.allclose(sweep.mixed[k], expected, atol=1e-6)
    assert torch.allclose(sweep.masks[1].mean((1, 2, 3)), torch.full((2,), 0.5), atol=0.05 + 1e-4)  # "auto"
    assert sweep.raw_masks[1].std() > 0.01  # the raw Mixer output is shown as it is
    cells = mask_cells(sweep, MEAN, STD)
    assert cells.shape == (6, 5, 3, 16, 16)
    assert torch.equal(cells[1, 2:], sweep.masks[:, 0].expand(-1, 3, -1, -1))


def test_samix_p_sweep_uses_its_own_trunk_and_matches_the_exporting_samix_i(tmp_path):
    cfg_i, model_i = _model("mix.type=samix_i")
    with torch.no_grad():
        model_i.mixing.mixer.net.value[0].weight.normal_(0, 1.0)
    model_i.mixing.mixer.export(str(tmp_path), model_i.method.target_trunk(), {"image_size": 16})
    _, model_p = _model("mix.type=samix_p", f"mix.checkpoint={tmp_path}/mixer.pt")
    pairs, lams = load_pairs(cfg_i, "train", 2), [0.3, 0.6]
    sweep_i, sweep_p = lambda_sweep(model_i, pairs, lams), lambda_sweep(model_p, pairs, lams)
    assert sweep_p.learned and sweep_i.raw_masks.std() > 1e-3
    assert torch.allclose(sweep_p.raw_masks, sweep_i.raw_masks, atol=1e-5)
    assert torch.allclose(sweep_p.mixed, sweep_i.mixed, atol=1e-5)


def test_the_sweep_passes_each_lambda_to_the_mixer_as_the_step_does(monkeypatch):
    cfg, model = _model("mix.type=resizemix")
    mixer, seen = model.mixing.mixer, []
    forward = mixer.forward
    monkeypatch.setattr(
        mixer, "forward", lambda xa, xb, lam, ctx: seen.append(lam) or forward(xa, xb, lam, ctx)
    )
    sweep = lambda_sweep(model, load_pairs(cfg, "train", 2), [0.2, 0.5, 0.9])
    assert seen == [0.2, 0.5, 0.9]
    # ResizeMix pastes the partner shrunk to tau = sqrt(1 - lambda): the pasted area falls as lambda rises
    pasted = [int((sweep.masks[k, 0] == 0).sum()) for k in range(3)]
    assert pasted[0] > pasted[1] > pasted[2] > 0
    assert pasted[0] <= int(0.8**0.5 * 16) ** 2


def test_choose_pairs_is_seeded_and_never_pairs_an_image_with_itself():
    a, b = choose_pairs(10, 4, seed=3)
    assert torch.equal(a, choose_pairs(10, 4, seed=3)[0]) and not torch.equal(
        a, choose_pairs(10, 4, seed=4)[0]
    )
    assert len(set(a.tolist()) | set(b.tolist())) == 8
    a, b = choose_pairs(3, 5, seed=0)  # fewer images than 2 x pairs
    assert bool((a != b).all())


def test_checkpoint_from_a_run_directory(tmp_path):
    cfg, model = _model("mix.type=samix_i")
    with torch.no_grad():
        model.mixing.mixer.net.query.weight.fill_(0.123)
    os.makedirs(tmp_path / "checkpoints")
    torch.save({"model": model.state_dict()}, tmp_path / "checkpoints" / "step_00000001.pt")
    torch.save({"model": {}}, tmp_path / "checkpoints" / "step_00000000.pt")  # older
    loaded = build_model(cfg, str(tmp_path), "cpu")
    assert torch.equal(loaded.mixing.mixer.net.query.weight, model.mixing.mixer.net.query.weight)
    other = tiny_config(*moco_overrides(), "mix.type=cutmix")
    with pytest.raises(ValueError, match="does not fit the model"):
        build_model(other, str(tmp_path), "cpu")


@pytest.mark.parametrize("mix, rows, bar", [("cutmix", 4, 0), ("samix_i", 12, 46)])
def test_training_grid_is_an_image_and_leaves_rng_and_mode_alone(mix, rows, bar):
    cfg, model = _model(f"mix.type={mix}")
    model.train()
    rng = torch.get_rng_state()
    grid = training_grid(cfg, model, "cpu")
    assert torch.equal(torch.get_rng_state(), rng) and model.training
    assert grid.shape == (3, rows * 66 + 2 + 72 + bar, 132 + 7 * 66 + 2)  # 4 pairs, 5 lambdas (+ mask rows)
    assert grid.dtype == torch.float32 and 0 <= float(grid.min()) and float(grid.max()) <= 1


def test_object_corr_is_one_for_a_mask_that_keeps_each_object_and_near_zero_for_boxes():
    from ssmix.visualize.mask_stats import foreground, object_corr

    generator = torch.Generator().manual_seed(0)
    p, side = 32, 16
    xa, xb = torch.full((p, 3, side, side), -0.8), torch.full((p, 3, side, side), -0.8)  # black, normalised
    for images, rows in ((xa, (0, 4)), (xb, (6, 10))):  # one bright rectangle each, a's above b's
        for i in range(p):
            top = torch.randint(*rows, (1,), generator=generator).item()
            left = torch.randint(0, 10, (1,), generator=generator).item()
            images[i, :, top : top + 6, left : left + 6] = torch.rand(1, generator=generator) + 0.5
    fa, fb = foreground(xa), foreground(xb)
    assert fa.sum(dim=1).eq(36).all()  # the 6x6 object exactly
    keeps_objects = ((fa - fb + 1) / 2).view(p, 1, side, side)
    assert object_corr(keeps_objects, xa, xb) == pytest.approx(1.0, abs=1e-5)
    assert object_corr(1 - keeps_objects, xa, xb) == pytest.approx(-1.0, abs=1e-5)
    boxes = torch.zeros(p, 1, side, side)  # CutMix-like boxes of b pasted blind to the images
    for i in range(p):
        top, left = torch.randint(0, side - 8, (2,), generator=generator).tolist()
        boxes[i, :, :, :] = 1.0
        boxes[i, :, top : top + 8, left : left + 8] = 0.0
    assert abs(object_corr(boxes, xa, xb)) < 0.15
    assert object_corr(torch.full((p, 1, side, side), 0.5), xa, xb) == 0.0  # a flat mask follows nothing


# ------------------------------------------------------------------------- figures that read alone (issue 23)


def test_rows_are_labelled_with_pair_indices_and_labels():
    from ssmix.visualize.figure import pair_labels

    cfg, model = _model("mix.type=interintra", "mix.labels=dataset", "data.num_classes=2", "seed=1")
    pairs = load_pairs(cfg, "train", 3)
    labels = pair_labels(lambda_sweep(model, pairs, [0.5]))
    assert len(labels) == 3
    for i, lines in enumerate(labels):
        assert lines == [
            f"pair {i + 1}",
            f"a: #{int(pairs.index_a[i])}, label {int(pairs.labels_a[i])}",
            f"b: #{int(pairs.index_b[i])}, label {int(pairs.labels_b[i])}",
        ]


def test_mask_figure_has_a_grey_scale_bar_and_the_title_names_the_weights(tmp_path, capsys):
    import numpy as np

    out = _cli(tmp_path, "mix.type=samix_i")
    masks = np.asarray(Image.open(tmp_path / "grid_masks.png").convert("RGB")).astype(int)
    ramp = masks[
        6 * 66 + 2 + 72 + 6 + 5, 132 + 2 + 1 : 132 + 2 + 300
    ]  # a row through the bar, inside its outline
    assert (ramp[:, 0] == ramp[:, 1]).all() and (ramp[:, 1] == ramp[:, 2]).all()  # grey
    assert (np.diff(ramp[:, 0]) >= 0).all() and ramp[0, 0] < 10 and ramp[-1, 0] > 200  # black to white
    plain = np.asarray(Image.open(out).convert("RGB"))
    assert plain.shape[0] == 2 * 66 + 2 + 72  # the image grid has no bar
    from ssmix.visualize_mix import weights_source

    assert weights_source(torch.nn.Identity(), None) == "untrained (no checkpoint=)"


def test_build_model_from_a_checkpoint_says_which_one(tmp_path):
    cfg, model = _model("mix.type=samix_i")
    os.makedirs(tmp_path / "checkpoints")
    torch.save({"model": model.state_dict(), "step": 7}, tmp_path / "checkpoints" / "step_00000007.pt")
    loaded = build_model(cfg, str(tmp_path), "cpu")
    from ssmix.visualize_mix import weights_source

    assert weights_source(loaded, str(tmp_path)).endswith("step_00000007.pt, step 7")


def test_vis_every_writes_pngs_under_the_run_dir(tmp_path):
    from ssmix.engine.trainer import train

    cfg = tiny_config(
        *moco_overrides(),
        f"output_dir={tmp_path}",
        "mix.type=cutmix",
        "train.vis_every=1",
        "train.max_steps=8",
    )
    train(cfg)
    assert sorted(os.listdir(tmp_path / "figures")) == ["mix_epoch0001.png", "mix_epoch0002.png"]
    assert Image.open(tmp_path / "figures" / "mix_epoch0002.png").size == (132 + 7 * 66 + 2, 4 * 66 + 2 + 72)
