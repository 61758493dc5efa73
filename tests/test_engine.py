"""Engine: exact resume, atomic checkpoints, exported backbone, learning."""

import json
import os

import pytest
import torch
import torchvision

from ssmix.engine import checkpoint as ckpt
from ssmix.engine.pretrainer import Pretrainer
from ssmix.engine.schedule import warmup_cosine
from ssmix.engine.trainer import train
from ssmix.models.backbones import load_torchvision_resnet
from tests.helpers import moco_overrides, tiny_config


def _run(tmp, *overrides):
    cfg = tiny_config(*moco_overrides(), f"output_dir={tmp}", *overrides)
    return train(cfg)


def _final_state(tmp):
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(str(tmp)))


def test_resume_is_exact_across_an_epoch_boundary(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _run(a, "train.max_steps=6")
    _run(b, "train.max_steps=3")  # stop mid-epoch (4 steps per epoch) ...
    summary = _run(b, "train.max_steps=6", "resume=auto")  # ... and continue past the epoch end
    assert summary["step"] == 6
    sa, sb = _final_state(a), _final_state(b)
    assert sa["step"] == sb["step"] == 6
    for key, value in sa["model"].items():
        assert torch.equal(value, sb["model"][key]), key
    assert sa["optimizer"]["state"].keys() == sb["optimizer"]["state"].keys()
    for k, st in sa["optimizer"]["state"].items():
        assert torch.equal(st["momentum_buffer"], sb["optimizer"]["state"][k]["momentum_buffer"])


def test_epoch_monitors_leave_the_training_trajectory_unchanged(tmp_path):
    """The kNN monitor and the mixed-sample grids run between epochs without moving the training loop's
    random streams (the monitor's DataLoader iterators take their seed from torch's global RNG): the
    weights equal a run without them."""
    _run(tmp_path / "off", "train.max_steps=6", "mix.type=mixup")
    _run(
        tmp_path / "on",
        "train.max_steps=6",
        "mix.type=mixup",
        "train.knn_every=1",
        "train.vis_every=1",
        "train.knn_k=5",
    )
    rows = [json.loads(line) for line in open(tmp_path / "on" / "metrics.jsonl")]
    assert any("knn_top1" in r for r in rows)  # the monitor did run
    off, on = _final_state(tmp_path / "off")["model"], _final_state(tmp_path / "on")["model"]
    for key, value in off.items():
        if key.endswith(("running_mean", "running_var")):  # below: the monitor's eval() averages split BN's
            continue  # per-split statistics, which export folds anyway
        assert torch.equal(value, on[key]), key
    exported = [torch.load(tmp_path / run / "backbone.pth", weights_only=True) for run in ("off", "on")]
    for key, value in exported[0].items():
        torch.testing.assert_close(value, exported[1][key], rtol=1e-5, atol=1e-6, msg=key)


def test_outputs_metrics_and_backbone_export(tmp_path):
    _run(tmp_path, "train.max_steps=2")
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2] and all("moco" in r and "img_per_s" in r for r in rows)
    assert os.path.isfile(tmp_path / "config.yaml")
    state = torch.load(tmp_path / "backbone.pth", weights_only=True)
    net = load_torchvision_resnet(state, "resnet18")  # strict=True inside
    assert isinstance(net, torchvision.models.ResNet)
    assert state["bn1.running_mean"].shape == (64,)  # split-BN stats folded to one set


def test_atomic_save_keeps_the_old_checkpoint_when_writing_fails(tmp_path, monkeypatch):
    path = str(tmp_path / "c.pt")
    ckpt.save_atomic({"step": 1}, path)

    def crash(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_atomic({"step": 2}, path)
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["c.pt"]


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable ssmix checkpoint"):
        ckpt.load_checkpoint(str(path))


def test_warmup_cosine_values():
    assert warmup_cosine(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 1.0, 10, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 1.0, 10, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 1.0, 10, 0.2) == pytest.approx(0.2)


def test_moco_learns_on_a_fixed_batch():
    """After the queue holds real keys, repeated steps on one batch lower the InfoNCE loss."""
    cfg = tiny_config(*moco_overrides(), "method.queue_size=32", "method.momentum=0.99")
    model = Pretrainer(cfg, 32, 10)
    opt = torch.optim.SGD(model.param_groups()[0]["params"], lr=0.05, momentum=0.9)
    views = [torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)]
    views[1] = views[0] + 0.1 * views[1]
    losses = []
    for step in range(40):
        out, _ = model.training_step(views, torch.zeros(8), torch.arange(8), step, 40, 20)
        loss = sum(out.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert sum(losses[-5:]) / 5 < sum(losses[4:9]) / 5 - 0.3
