"""Frozen-encoder evaluation: probe, features, cache, kNN, checkpoint loading, protocol check, CLI."""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torchvision
import yaml
from torch.utils.data import DataLoader, TensorDataset

from ssmix.evaluation.features import FeatureCache, extract_features
from ssmix.evaluation.knn import knn_accuracy, knn_rank_classes
from ssmix.evaluation.linear import (
    BackboneChangedError,
    ProbeHistory,
    ProbeSchedule,
    median_last,
    train_probe_cached,
    train_probe_in_loop,
)
from ssmix.evaluation.weights import WeightsError, load_encoder
from ssmix.models.backbones import ResNetTrunk, build_backbone, export_state_dict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_trunk(seed: int = 0, **kwargs) -> ResNetTrunk:
    torch.manual_seed(seed)
    return build_backbone("resnet18", **kwargs).eval()


def assert_same_state(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key].float(), want[key].float()), key


# ---------------------------------------------------------------------------------------------
# Linear probe
# ---------------------------------------------------------------------------------------------


def separable(n_per_class: int, generator: torch.Generator):
    """Three classes: Gaussian blobs around far-apart centres in 16-d (linearly separable)."""
    centres = torch.eye(3, 16) * 8.0
    labels = torch.arange(3).repeat_interleave(n_per_class)
    return centres[labels] + 0.5 * torch.randn(len(labels), 16, generator=generator), labels


def test_probe_reaches_99_percent_on_separable_features():
    generator = torch.Generator().manual_seed(0)
    train_x, train_y = separable(40, generator)
    test_x, test_y = separable(30, generator)
    schedule = ProbeSchedule(epochs=10, batch_size=16, lr=0.1, milestones=(6, 8))
    history = train_probe_cached(train_x, train_y, test_x, test_y, 3, schedule, seed=0)
    assert len(history.top1) == 10 and history.top1[-1] >= 99.0
    assert history.loss[-1] < history.loss[0]
    # Augmented copies (copies, N, D): one copy per image per epoch, same result on separable data.
    copies = torch.stack([train_x, train_x + 0.1 * torch.randn(train_x.shape, generator=generator)])
    assert train_probe_cached(copies, train_y, test_x, test_y, 3, schedule, seed=1).top1[-1] >= 99.0


def test_feature_bn_probe_learns_features_of_any_scale_where_the_raw_probe_diverges():
    """A 4-step encoder's features on digits were large in scale: the raw probe's loss went to ~1e6."""
    generator = torch.Generator().manual_seed(3)

    def overlapping(n_per_class):  # three overlapping blobs: the probe cannot reach zero loss
        labels = torch.arange(3).repeat_interleave(n_per_class)
        return torch.eye(3, 16)[labels] + torch.randn(len(labels), 16, generator=generator), labels

    (train_x, train_y), (test_x, test_y) = overlapping(40), overlapping(30)
    schedule = ProbeSchedule(epochs=10, batch_size=16, lr=0.1, milestones=(6, 8))
    raw = train_probe_cached(
        train_x * 1e4,
        train_y,
        test_x * 1e4,
        test_y,
        3,
        ProbeSchedule(**{**schedule.__dict__, "feature_bn": False}),
        seed=0,
    )
    assert raw.loss[-1] > 1e5 and "above a uniform guess's ln(3)" in raw.divergence(3)
    standardised = [
        train_probe_cached(train_x * scale, train_y, test_x * scale, test_y, 3, schedule, seed=0)
        for scale in (1.0, 1e2, 1e4)
    ]
    for history in standardised:  # one trajectory whatever the scale: the BatchNorm removes it
        assert history.divergence(3) is None and history.loss[-1] < 0.9 * math.log(3)
        assert history.loss == pytest.approx(standardised[0].loss, rel=1e-3)
        # a test image may flip in rounding
        assert history.top1 == pytest.approx(standardised[0].top1, abs=2.5)


def test_feature_bn_standardises_with_batch_statistics_and_tests_with_running_ones():
    from ssmix.evaluation.linear import make_probe

    probe = make_probe(4, 2, seed=0)
    assert isinstance(probe[0], nn.BatchNorm1d) and not probe[0].affine
    assert [name for name, _ in probe.named_parameters()] == [
        "1.weight",
        "1.bias",
    ]  # only the linear layer learns
    x = torch.randn(64, 4) * 50 + 7
    probe.train()
    probe(x)
    assert torch.allclose(probe[0].running_mean, 0.1 * x.mean(0), atol=1e-4)  # momentum 0.1 from 0
    probe.eval()
    expected = probe[1]((x - probe[0].running_mean) / torch.sqrt(probe[0].running_var + probe[0].eps))
    assert torch.allclose(probe(x), expected, atol=1e-4)
    assert isinstance(make_probe(4, 2, 0, feature_bn=False), nn.Linear)


def test_divergence_names_a_rising_or_non_finite_loss():
    assert ProbeHistory(loss=[2.0, 1.0, 0.5]).divergence(10) is None
    assert "rose from 0.5 (epoch 1) to 0.9" in ProbeHistory(loss=[0.5, 0.3, 0.9]).divergence(10)
    assert "above a uniform guess's ln(10) = 2.3" in ProbeHistory(loss=[9.0, 5.0, 2.5]).divergence(10)
    assert "nan at epoch 2" in ProbeHistory(loss=[1.0, math.nan, math.nan]).divergence(10)


def test_lr_grid_picks_on_a_training_carve_out_never_the_test_set():
    from ssmix.evaluation.linear import select_lr

    generator = torch.Generator().manual_seed(4)
    train_x, train_y = separable(40, generator)
    schedule = ProbeSchedule(epochs=4, batch_size=16, lr=0.1, milestones=(3,))
    best, scores = select_lr(train_x, train_y, 3, schedule, [1e-7, 0.1])
    assert best == 0.1 and list(scores) == [1e-7, 0.1] and scores[0.1] == 100.0 > scores[1e-7]
    assert select_lr(train_x, train_y, 3, schedule, [0.1, 0.2])[0] == 0.1  # a tie goes to the first rate


def test_evaluate_warns_of_a_diverged_probe_a_clipped_knn_and_reports_the_lr_pick(capsys):
    from ssmix.evaluation import evaluate

    common = dict(
        data={"name": "synthetic", "num_samples": 40, "num_classes": 2, "image_size": 16, "num_workers": 0},
        epochs=3,
        batch_size=8,
        milestones=[2],
        knn_k=500,
        cache_dir=None,
        device="cpu",
    )
    picked = evaluate("random", lr_grid=[1e-7, 0.1], **common)
    assert picked["lr"] == 0.1 and set(picked["lr_grid"]) == {"1e-07", "0.1"}
    assert any(
        "knn_k=500 is more than the 40 images of the kNN bank (synthetic train)" in w
        for w in picked["warnings"]
    )
    raw = evaluate("random", lr=1e5, feature_bn=False, **common)
    assert any("diverged" in w and "feature_bn=true" in w for w in raw["warnings"])
    assert "warning: linear probe (seed 0) diverged" in capsys.readouterr().err


def test_median_of_last_10_epochs():
    values = [float(v) for v in [90, 1, 2, 3, 4, 50, 60, 70, 80, 5, 6, 7]]  # last 10: 2, 3, ... 7
    assert median_last(values, 10) == (6.0 + 7.0) / 2  # sorted: 2 3 4 5 6 7 50 60 70 80
    assert median_last([3.0, 1.0, 2.0], 10) == 2.0  # fewer than 10 epochs: all of them
    history = ProbeHistory(top1=values, top5=[100.0 - v for v in values], loss=[0.0] * 12)
    summary = history.summary(10)
    assert summary["top1"] == 6.5 and summary["top5"] == 93.5 and summary["final_top1"] == 7.0


# ---------------------------------------------------------------------------------------------
# Features and cache
# ---------------------------------------------------------------------------------------------


def test_extracted_features_equal_eval_mode_forward():
    trunk = tiny_trunk(1)
    images = torch.randn(6, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        want = trunk.eval()(images)
    trunk.train()  # extraction must switch to eval mode and restore the flag
    features, got_labels = extract_features(
        trunk, DataLoader(TensorDataset(images, labels), batch_size=4), torch.device("cpu")
    )
    assert trunk.training
    assert features.shape == (6, 512) and torch.equal(got_labels, labels)
    torch.testing.assert_close(features, want, rtol=1e-4, atol=1e-5)


class ForwardCounter:
    """Counts images through ResNetTrunk.forward (monkeypatched)."""

    def __init__(self, monkeypatch):
        self.images = 0
        original = ResNetTrunk.forward

        def counting(trunk, x, start=0):
            self.images += x.shape[0]
            return original(trunk, x, start)

        monkeypatch.setattr(ResNetTrunk, "forward", counting)


def test_cache_reused_then_invalidated_by_a_changed_checkpoint(tmp_path, monkeypatch):
    from ssmix.evaluation import evaluate

    trunk = tiny_trunk(2)
    path = tmp_path / "backbone.pth"
    torch.save(export_state_dict(trunk), path)
    counter = ForwardCounter(monkeypatch)
    options = dict(
        data={"name": "synthetic", "num_samples": 16, "num_classes": 3, "image_size": 16, "num_workers": 0},
        epochs=12,
        batch_size=8,
        milestones=[8],
        seeds=2,
        knn_k=5,
        cache_dir=str(tmp_path / "cache"),
        device="cpu",
    )
    first = evaluate(str(path), **options)
    assert counter.images == 32 and first["feature_cache"] == {
        "dir": str(tmp_path / "cache"),
        "hits": 0,
        "misses": 2,
    }

    counter.images = 0
    second = evaluate(str(path), **options, output_dir=str(tmp_path / "out"))
    assert counter.images == 0 and second["feature_cache"]["hits"] == 2  # no extraction at all
    assert second["top1"] == first["top1"] and second["knn_top1"] == first["knn_top1"]
    # Reporting: per seed the median of the last 10 epochs; mean and sample std over the seeds.
    medians = [statistics.median(s["history"]["top1"][-10:]) for s in second["per_seed"]]
    assert len(second["per_seed"][0]["history"]["top1"]) == 12
    assert math.isclose(second["top1"], statistics.fmean(medians))
    assert math.isclose(second["top1_std"], statistics.stdev(medians))
    assert (tmp_path / "out" / "results.json").is_file() and second["markdown_row"].startswith("| ")

    with torch.no_grad():
        trunk.layer4[1].conv2.weight.mul_(1.5)
    torch.save(export_state_dict(trunk), path)
    counter.images = 0
    third = evaluate(str(path), **options)
    assert counter.images == 32 and third["feature_cache"]["misses"] == 2
    assert third["weights_hash"] != first["weights_hash"]


def test_feature_cache_recomputes_when_key_parts_differ(tmp_path):
    cache = FeatureCache(str(tmp_path))
    calls = []

    def compute(value):
        calls.append(value)
        return torch.full((1, 2, 3), float(value)), torch.zeros(2, dtype=torch.long)

    a1, _ = cache.get_or_compute({"weights": "a", "split": "train"}, lambda: compute(1))
    a2, _ = cache.get_or_compute({"weights": "a", "split": "train"}, lambda: compute(2))
    b, _ = cache.get_or_compute({"weights": "b", "split": "train"}, lambda: compute(3))
    assert calls == [1, 3] and torch.equal(a1, a2) and b[0, 0, 0] == 3.0


# ---------------------------------------------------------------------------------------------
# kNN
# ---------------------------------------------------------------------------------------------


def brute_force_knn(query, bank, bank_labels, num_classes, k, t):
    """Reference weighted vote with explicit loops: top-1 class per query."""
    predictions = []
    for q in query:
        sims = []
        for j in range(bank.shape[0]):
            cos = float(q @ bank[j]) / (float(q.norm()) * float(bank[j].norm()))
            sims.append((cos, int(bank_labels[j])))
        sims.sort(key=lambda s: -s[0])
        scores = [0.0] * num_classes
        for cos, label in sims[:k]:
            scores[label] += math.exp(cos / t)
        predictions.append(max(range(num_classes), key=lambda c: scores[c]))
    return torch.tensor(predictions)


@pytest.mark.parametrize("k", [3, 200])  # 200 > bank size: every sample votes
def test_knn_matches_brute_force(k):
    generator = torch.Generator().manual_seed(3)
    bank = torch.randn(20, 5, generator=generator)
    bank_labels = torch.randint(0, 4, (20,), generator=generator)
    query = torch.randn(9, 5, generator=generator)
    ranked = knn_rank_classes(query, bank, bank_labels, 4, k=k, t=0.1)
    assert ranked.shape == (9, 4)
    assert torch.equal(ranked[:, 0], brute_force_knn(query, bank, bank_labels, 4, k, 0.1))


def test_knn_accuracy_monitor_restores_train_mode():
    generator = torch.Generator().manual_seed(4)
    bank, bank_labels = (
        torch.randn(16, 6, generator=generator),
        torch.randint(0, 3, (16,), generator=generator),
    )
    query, query_labels = (
        torch.randn(10, 6, generator=generator),
        torch.randint(0, 3, (10,), generator=generator),
    )
    backbone = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(6, affine=False)).train()
    backbone[1].running_mean.copy_(bank.mean(0))  # eval-mode BN: a fixed affine map
    backbone[1].running_var.fill_(4.0)
    accuracy = knn_accuracy(
        backbone,
        DataLoader(TensorDataset(bank, bank_labels), batch_size=5),
        DataLoader(TensorDataset(query, query_labels), batch_size=5),
        "cpu",
        k=4,
        t=0.1,
    )
    shift = bank.mean(0)
    want = brute_force_knn(query - shift, bank - shift, bank_labels, 3, 4, 0.1)
    assert accuracy == pytest.approx(100.0 * float((want == query_labels).float().mean()))
    assert backbone.training and torch.equal(backbone[1].running_mean, shift)


def test_knn_monitor_of_the_pretraining_engine():
    from ssmix.config import Config
    from ssmix.data.datasets import DATASET_INFO, build_dataset
    from ssmix.evaluation.features import test_transform
    from ssmix.evaluation.monitor import knn_monitor

    cfg = Config()
    cfg.data.name, cfg.data.image_size, cfg.data.num_samples, cfg.data.num_workers = "synthetic", 8, 12, 0
    trunk = nn.Flatten().train()
    accuracy = knn_monitor(cfg, trunk, "cpu", k=3)
    transform = test_transform(8, DATASET_INFO["synthetic"].mean, DATASET_INFO["synthetic"].std)
    (bank, bank_labels), (query, query_labels) = [
        (
            torch.stack([transform(image).flatten() for image, _ in ds]),
            torch.tensor([label for _, label in ds]),
        )
        for ds in (
            build_dataset("synthetic", "data", split, image_size=8, num_samples=12)
            for split in ("train", "test")
        )
    ]
    want = brute_force_knn(query, bank, bank_labels, 10, 3, 0.1)
    assert accuracy == pytest.approx(100.0 * float((want == query_labels).float().mean()))
    assert trunk.training


# ---------------------------------------------------------------------------------------------
# Checkpoint formats
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source_trunk():
    return tiny_trunk(5, cifar_stem=True)


def test_load_exported_backbone_and_run_dir(tmp_path, source_trunk):
    want = export_state_dict(source_trunk)
    torch.save(want, tmp_path / "backbone.pth")
    encoder = load_encoder(str(tmp_path / "backbone.pth"))
    assert (encoder.arch, encoder.cifar_stem) == ("resnet18", True)  # inferred from the weights
    assert_same_state(encoder.backbone.state_dict(), want)
    assert not encoder.backbone.training and not any(p.requires_grad for p in encoder.backbone.parameters())

    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": {"arch": "resnet18", "cifar_stem": True}}))
    from_dir = load_encoder(str(tmp_path))
    assert from_dir.source == str(tmp_path / "backbone.pth") and from_dir.weights_hash == encoder.weights_hash


def test_load_training_checkpoint_with_split_bn(tmp_path, source_trunk):
    torch.manual_seed(6)
    trunk = build_backbone("resnet18", cifar_stem=True, bn_splits=4)
    for name, buffer in trunk.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            buffer.copy_(torch.rand(buffer.shape) + 0.5)
    assert trunk.state_dict()["bn1.running_mean"].shape == (4 * 64,)
    model = {f"method.backbone.{k}": v for k, v in trunk.state_dict().items()}
    model.update({f"method.momentum_backbone.{k}": v + 1 for k, v in trunk.state_dict().items()})
    model["method.projector.0.weight"] = torch.zeros(128, 512)
    (tmp_path / "checkpoints").mkdir()
    torch.save({"model": model, "step": 10, "optimizer": {}}, tmp_path / "checkpoints" / "step_00000010.pt")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": {"arch": "resnet18", "cifar_stem": True}}))

    # run dir without backbone.pth; file
    for weights in (
        tmp_path,
        tmp_path / "checkpoints" / "step_00000010.pt",
    ):
        encoder = load_encoder(str(weights))
        assert encoder.prefix == "method.backbone."
        assert_same_state(encoder.backbone.state_dict(), export_state_dict(trunk))
    stats = encoder.backbone.state_dict()["bn1.running_var"]
    assert torch.allclose(stats, trunk.bn1.running_var.view(4, 64).mean(0))


def test_load_torchvision_state_dict_with_fc(tmp_path):
    torch.manual_seed(7)
    net = torchvision.models.resnet18(num_classes=10)
    torch.save(net.state_dict(), tmp_path / "tv.pth")
    encoder = load_encoder(str(tmp_path / "tv.pth"))
    assert (encoder.arch, encoder.cifar_stem, encoder.prefix) == ("resnet18", False, "")
    want = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    assert_same_state(encoder.backbone.state_dict(), want)
    with torch.no_grad():  # same features as torchvision's trunk
        net.fc = nn.Identity()
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(encoder.backbone(x), net.eval()(x))


def test_load_official_moco_checkpoint(tmp_path, source_trunk):
    trunk_state = source_trunk.state_dict()
    state = {f"module.encoder_q.{k}": v for k, v in trunk_state.items()}
    state.update({f"module.encoder_k.{k}": v * 0 for k, v in trunk_state.items()})
    state.update(
        {
            "module.encoder_q.fc.0.weight": torch.zeros(512, 512),
            "module.encoder_q.fc.2.weight": torch.zeros(128, 512),
            "module.queue": torch.zeros(128, 16),
            "module.queue_ptr": torch.zeros(1),
        }
    )
    torch.save(
        {"epoch": 200, "arch": "resnet18", "state_dict": state, "optimizer": {}}, tmp_path / "moco.pth.tar"
    )
    encoder = load_encoder(str(tmp_path / "moco.pth.tar"))
    assert encoder.prefix == "module.encoder_q."
    assert_same_state(encoder.backbone.state_dict(), trunk_state)


def test_mismatched_checkpoint_fails_with_key_lists(tmp_path, source_trunk):
    state = {k: v for k, v in export_state_dict(source_trunk).items() if not k.startswith("layer4.1.")}
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(WeightsError) as info:
        load_encoder(str(tmp_path / "broken.pth"))
    message = str(info.value)
    assert "missing keys" in message and "layer4.1.conv1.weight" in message
    assert "unexpected keys (1): extra.weight" in message and "broken.pth" in message

    torch.save(export_state_dict(source_trunk), tmp_path / "r18.pth")
    with pytest.raises(WeightsError, match=r"missing keys .*layer1\.2\.conv1\.weight"):
        load_encoder(str(tmp_path / "r18.pth"), arch="resnet34")
    with pytest.raises(WeightsError, match="not a file"):
        load_encoder(str(tmp_path / "nope.pth"))
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        load_encoder(str(tmp_path / "garbage.pth"))


# ---------------------------------------------------------------------------------------------
# Protocol mode
# ---------------------------------------------------------------------------------------------


def tiny_image_sets(generator):
    images = torch.randn(12, 3, 16, 16, generator=generator)
    labels = torch.arange(12) % 3
    return TensorDataset(images[:8], labels[:8]), TensorDataset(images[8:], labels[8:])


def test_protocol_keeps_backbone_frozen_and_matches_cached_probe():
    trunk = tiny_trunk(8)
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    train_set, test_set = tiny_image_sets(torch.Generator().manual_seed(8))
    schedule = ProbeSchedule(epochs=2, batch_size=4, lr=0.1, milestones=(1,))
    trunk.train()  # the protocol must put it (and its BN) in eval mode itself
    in_loop = train_probe_in_loop(trunk, train_set, test_set, 3, schedule, seed=0, num_workers=0)
    assert_same_state(trunk.state_dict(), before)
    # Same inputs, same seeds: the cached probe follows the same trajectory.
    cpu = torch.device("cpu")
    train_x, train_y = extract_features(trunk, DataLoader(train_set, batch_size=4), cpu)
    test_x, test_y = extract_features(trunk, DataLoader(test_set, batch_size=4), cpu)
    cached = train_probe_cached(train_x, train_y, test_x, test_y, 3, schedule, seed=0)
    assert cached.top1 == in_loop.top1
    assert cached.loss == pytest.approx(in_loop.loss, rel=1e-4)


def test_evaluate_protocol_and_augmented_copies_end_to_end():
    from ssmix.evaluation import evaluate

    common = dict(
        data={"name": "synthetic", "num_samples": 8, "num_classes": 2, "image_size": 16, "num_workers": 0},
        epochs=2,
        batch_size=4,
        milestones=[1],
        knn_k=3,
        cache_dir=None,
        device="cpu",
    )
    protocol = evaluate("random", mode="protocol", **common)
    cached = evaluate("random", mode="cached", aug_copies=2, **common)
    for result in (protocol, cached):
        assert (result["num_train"], result["num_test"], result["feature_dim"], result["num_classes"]) == (
            8,
            8,
            512,
            2,
        )
        assert len(result["per_seed"][0]["history"]["top1"]) == 2 and 0.0 <= result["top1"] <= 100.0
        assert (result["arch"], result["cifar_stem"]) == ("resnet18", False)
    assert protocol["knn_top1"] == cached["knn_top1"]  # same encoder, same test-transform features
    assert cached["feature_cache"]["misses"] == 3  # train, test, train x 2 augmented copies


class DriftingTrunk(nn.Module):
    """A 'backbone' whose forward changes its own buffer: the protocol check must catch it."""

    out_dim = 3 * 16 * 16

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(1))

    def forward(self, x):
        self.calls += 1
        return x.flatten(1)


def test_protocol_check_fails_when_backbone_changes():
    train_set, test_set = tiny_image_sets(torch.Generator().manual_seed(9))
    with pytest.raises(BackboneChangedError, match="calls"):
        train_probe_in_loop(
            DriftingTrunk(), train_set, test_set, 3, ProbeSchedule(epochs=1, batch_size=4), num_workers=0
        )


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("bogus.key=1", "unknown key 'bogus'"),
        ("epochs=many", "epochs: expected int"),
        ("mode=fast", "mode: unknown value 'fast'"),
    ],
)
def test_cli_rejects_bad_keys_with_exit_code_2(override, fragment):
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "linear_eval", "run.py"),
            os.path.join(REPO, "configs", "linear", "synthetic.yaml"),
            "weights=random",
            override,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0]


def test_every_linear_config_loads():
    from ssmix.evaluation.config import load_eval_config

    names = sorted(f for f in os.listdir(os.path.join(REPO, "configs", "linear")) if not f.startswith("_"))
    assert {
        "stl10.yaml",
        "tiny_imagenet.yaml",
        "cifar10.yaml",
        "cifar100.yaml",
        "imagenet.yaml",
        "digits.yaml",
        "synthetic.yaml",
    } <= set(names)
    for name in names:
        cfg = load_eval_config(os.path.join(REPO, "configs", "linear", name), ["weights=random"])
        assert cfg.mode == "cached" and cfg.weight_decay == 0.0 and cfg.momentum == 0.9
    imagenet = load_eval_config(os.path.join(REPO, "configs", "linear", "imagenet.yaml"), ["weights=x"])
    assert (imagenet.lr, imagenet.feature_bn) == (30.0, False)  # MoCo's probe on raw features
    tiny = load_eval_config(os.path.join(REPO, "configs", "linear", "tiny_imagenet.yaml"), ["weights=x"])
    assert (tiny.data.image_size, tiny.data.test_split, tiny.lr, tiny.milestones) == (
        96,
        "val",
        0.1,
        [60, 80],
    )


def test_probe_schedule_from_an_eval_config_takes_every_field():
    from ssmix.evaluation.config import load_eval_config

    cfg = load_eval_config(
        os.path.join(REPO, "configs", "linear", "digits.yaml"),
        [
            "weights=x",
            "epochs=7",
            "batch_size=9",
            "lr=0.3",
            "momentum=0.5",
            "weight_decay=0.01",
            "milestones=[2,5]",
            "gamma=0.2",
        ],
    )
    assert ProbeSchedule.from_config(cfg) == ProbeSchedule(7, 9, 0.3, 0.5, 0.01, (2, 5), 0.2, True)
    raw = load_eval_config(
        os.path.join(REPO, "configs", "linear", "digits.yaml"), ["weights=x", "feature_bn=false"]
    )
    assert ProbeSchedule.from_config(raw).feature_bn is False


def test_random_encoder_takes_a_seed():
    from ssmix.evaluation.weights import WeightsError, load_encoder

    zero, again, one = (load_encoder(w, "resnet18", True) for w in ("random", "random:0", "random:1"))
    assert zero.weights_hash == again.weights_hash != one.weights_hash
    with pytest.raises(WeightsError, match="random:<seed>"):
        load_encoder("random:x", "resnet18", True)
