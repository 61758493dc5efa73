"""``bench/recipe.py`` and ``bench/learning.py`` without training: random encoders are evaluated once and
read back, the Fashion-MNIST kNN curve figure is drawn from the ledger's curves, and a mask figure whose
run directory is gone is skipped rather than crashing the table."""

from __future__ import annotations

import os

import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture()
def bench(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    import learning
    import recipe

    monkeypatch.setattr(recipe, "RUNS", str(tmp_path / "runs"))
    return recipe, learning


def test_random_accuracy_is_evaluated_once_per_seed_and_split_then_read_back(bench, monkeypatch):
    recipe, learning = bench
    calls = []

    def fake_heldout(weights, image_size, arch, cifar_stem, eval_config, overrides):
        calls.append((weights, tuple(overrides)))
        return {"linear": 80.0 + len(calls), "knn": 79.0}

    monkeypatch.setattr(recipe, "heldout_accuracy", fake_heldout)
    config = learning.FASHION_RUNS["mocov2"]
    first = recipe.random_accuracy(config, 1, recipe.VAL_SPLIT)
    again = recipe.random_accuracy(config, 1, recipe.VAL_SPLIT)
    test_split = recipe.random_accuracy(config, 1)
    assert first == again == {"linear": 81.0, "knn": 79.0}
    assert test_split["linear"] == 82.0  # another split is another evaluation
    assert calls == [("random:1", ("data.test_split=val",)), ("random:1", ())]
    cached = os.path.join(
        recipe.RUNS, "fashion_mnist", "random_init,data.test_split=val", "seed1", "result.json"
    )
    assert os.path.exists(cached)


def test_knn_curve_figure_draws_the_recorded_curves(bench, monkeypatch, tmp_path):
    recipe, learning = bench
    curves = {
        "mocov2": [[2.0, 79.1], [4.0, 80.1], [8.0, 81.5]],
        "mocov2_cutmix": [[2.0, 77.9], [4.0, 79.0], [8.0, 80.2]],
    }
    by_config = {learning.FASHION_RUNS[name]: {"online_knn": c} for name, c in curves.items()}
    monkeypatch.setattr(recipe, "finished", lambda config, overrides, seed: by_config.get(config))
    monkeypatch.setattr(
        learning, "random_init", lambda seeds, runs, overrides=(): [{"knn": 80.0}, {"knn": 80.2}]
    )
    monkeypatch.setattr(learning, "CURVE_FIGURE", str(tmp_path / "curves.png"))
    from ssmix.visualize.curves import PALETTE, SIZE, Series, chart_frame

    assert learning.knn_curve_figure() == str(tmp_path / "curves.png")
    image = Image.open(tmp_path / "curves.png").convert("RGB")
    assert image.size == SIZE
    frame = chart_frame([Series(n, c) for n, c in curves.items()], reference=80.1)
    px, py = frame.to_pixel(8.0, 80.2)  # cutmix's last point, the second colour (no SAMix-C curve)
    assert image.getpixel((round(px), round(py))) == PALETTE[1]


def test_no_curves_and_no_checkpoint_mean_no_figure(bench, monkeypatch):
    recipe, learning = bench
    monkeypatch.setattr(recipe, "finished", lambda config, overrides, seed: {"linear": 90.0})
    assert learning.knn_curve_figure() is None  # results without online_knn
    assert learning.mask_figure(learning.FASHION_RUNS["mocov2_samix_c"], "fashion_samix_c") is None


def test_fashion_table_scores_a_variant_row_from_its_own_overrides(bench, monkeypatch):
    recipe, learning = bench
    samix_c = learning.FASHION_RUNS["mocov2_samix_c"]
    results = {
        (samix_c, ()): {"linear": 84.0, "knn": 81.0},
        (samix_c, ("mix.qk_init_std=0.1",)): {"linear": 85.5, "knn": 82.5},
        (samix_c, tuple(learning.BINARY_INIT)): {"linear": 84.7, "knn": 82.1},
    }
    monkeypatch.setattr(
        recipe, "finished", lambda config, overrides, seed: results.get((config, tuple(overrides)))
    )
    monkeypatch.setattr(
        learning, "random_init", lambda seeds, runs, overrides=(): [{"linear": 80.0, "knn": 79.0}]
    )
    monkeypatch.setattr(recipe, "pixel_accuracy", lambda size, config=None: {"linear": 81.0, "knn": 82.0})
    rows = {row.split(" | ")[0].lstrip("| "): row for row in learning.fashion_table([0]).splitlines()}
    assert rows["mocov2_samix_c"].startswith("| mocov2_samix_c | 1 | 84.0 | 81.0 |")
    assert rows[learning.QK_ROW].startswith(f"| {learning.QK_ROW} | 1 | 85.5 | 82.5 |")
    assert rows[learning.BINARY_ROW].startswith(f"| {learning.BINARY_ROW} | 1 | 84.7 | 82.1 |")
    assert rows["mocov2_mixup"].startswith("| mocov2_mixup | 0 | not run |")


def test_a_run_scored_on_raw_features_is_run_again_and_recorded_as_standardised(bench, monkeypatch):
    recipe, learning = bench
    import ssmix.engine.trainer as trainer

    config = learning.RUNS["mocov2"]
    ledger = {}
    trained = []
    monkeypatch.setattr(recipe, "finished", lambda config, overrides, seed: ledger.get(seed))
    monkeypatch.setattr(recipe, "record", lambda result: ledger.__setitem__(result["seed"], result))
    monkeypatch.setattr(
        trainer, "train", lambda cfg: trained.append(cfg.output_dir) or os.makedirs(cfg.output_dir)
    )
    monkeypatch.setattr(recipe, "heldout_accuracy", lambda *a, **k: {"linear": 97.0, "knn": 96.0})
    monkeypatch.setattr(recipe, "last_metrics", lambda run_dir: {})
    monkeypatch.setattr(recipe, "online_knn_curve", lambda run_dir, cfg: [])
    ledger[0] = {"seed": 0, "linear": 94.0, "knn": 95.0}  # scored before feature_bn: no marker
    result = recipe.run(config, [], 0)
    assert len(trained) == 1 and result["linear"] == 97.0 and result["feature_bn"] is True
    assert recipe.run(config, [], 0) is ledger[0] and len(trained) == 1  # today's probe: read back


def test_digits_table_lists_standardised_results_and_keeps_the_raw_feature_record(bench, monkeypatch):
    recipe, learning = bench
    results = {
        (learning.RUNS["mocov2"], 0): {"linear": 97.5, "knn": 96.5, "feature_bn": True},
        (learning.RUNS["mocov2"], 1): {"linear": 90.0, "knn": 90.0},  # raw features: not averaged in
        (learning.RUNS["simclr"], 0): {"linear": 96.0, "knn": 95.0},
    }
    monkeypatch.setattr(recipe, "finished", lambda config, overrides, seed: results.get((config, seed)))
    monkeypatch.setattr(learning, "random_init", lambda seeds: [{"linear": 95.0, "knn": 94.0}])
    monkeypatch.setattr(recipe, "pixel_accuracy", lambda size: {"linear": 95.0, "knn": 97.0})
    text = learning.table([0, 1])
    main, raw = text.split(learning.RAW_PROBE_TABLE.splitlines()[0])
    rows = {row.split(" | ")[0].lstrip("| "): row for row in main.splitlines() if row.startswith("| ")}
    assert rows["mocov2"].startswith("| mocov2 | 1 | 97.5 | 96.5 |")
    assert rows["simclr"].startswith("| simclr | 0 | not run |")
    assert "| mocov2 | 3 | 96.9 ± 0.3 | 96.4 ± 1.1 |" in raw
