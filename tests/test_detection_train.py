"""Tiny end-to-end runs of the embedded backend on CPU: Faster R-CNN C4 (VOC) and Mask R-CNN C4 (COCO)
from ssmix-style encoders, the gradient flow of one C4 step, and the multi-trial runner on R18-FPN."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

from detection import train
from detection.datasets import DetectionDataset, load_datasets
from detection.model import build_detector, build_resnet
from detection.schema import ModelSpec
from detection.synthetic import write_coco, write_voc
from tests.detection_helpers import PRESETS, encoder_state


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("detection_train")
    write_voc(str(root / "data"), num_trainval=4, num_test=2, years=("2007",))
    write_coco(str(root / "data"), num_train=4, num_val=2)
    r50 = encoder_state("resnet50")
    torch.save(r50, root / "backbone.pth")
    # The same trunk as an ssmix training checkpoint (online trunk under method.backbone.).
    torch.save({"model": {f"method.backbone.{k}": v for k, v in r50.items()}, "step": 10}, root / "step.pt")
    torch.save(encoder_state("resnet18"), root / "r18.pth")
    return root


def _run(workdir, preset, name, *overrides):
    out = workdir / name
    code = train.main([os.path.join(PRESETS, preset), f"data.root={workdir / 'data'}", f"output_dir={out}",
                       *overrides])
    assert code == 0
    return out, json.loads((out / "metrics.json").read_text())


def _check_metrics(metrics, names):
    for name in names:
        assert 0.0 <= metrics[name] <= 100.0 or math.isnan(metrics[name]), name


def test_faster_rcnn_c4_voc_trains_and_evaluates(workdir):
    out, summary = _run(workdir, "tiny_voc_c4.yaml", "voc", f"model.weights={workdir / 'backbone.pth'}",
                        "test.precise_bn_iters=1")
    assert summary["num_trials"] == 1
    _check_metrics(summary["mean"], ["bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/AP50-dog"])
    log = (out / "log.txt").read_text()
    assert "iter 2/2" in log and "evaluated voc_2007_test (2 images" in log
    final = torch.load(out / "model_final.pth", weights_only=True)["model"]
    encoder = torch.load(workdir / "backbone.pth", weights_only=True)
    assert not torch.equal(final["backbone.conv1.weight"], encoder["conv1.weight"])  # trained from the encoder
    assert torch.allclose(final["backbone.conv1.weight"], encoder["conv1.weight"], atol=1e-2)
    # Precise BN reset the statistics and averaged exactly test.precise_bn_iters batches.
    assert final["roi_heads.box_head.norm.num_batches_tracked"].item() == 1  # not 2 (the training steps)
    assert final["backbone.bn1.num_batches_tracked"].item() == 1


def test_mask_rcnn_c4_coco_trains_and_evaluates(workdir):
    pytest.importorskip("pycocotools")
    out, summary = _run(workdir, "tiny_coco_c4.yaml", "coco", f"model.weights={workdir / 'step.pt'}")
    _check_metrics(summary["mean"], [f"{t}/{m}" for t in ("bbox", "segm") for m in ("AP", "AP50", "AP75")])
    assert "evaluated coco_2017_val (2 images" in (out / "log.txt").read_text()


def test_one_c4_mask_step_reaches_every_parameter(workdir):
    pytest.importorskip("pycocotools")
    loaded = load_datasets(["coco_2017_train"], str(workdir / "data"))
    image, target, _ = DetectionDataset(loaded.records, train=True, with_masks=True)[0]
    spec = ModelSpec(mask=True, rpn_pre_nms_topk_train=100, rpn_post_nms_topk_train=16, roi_batch_size_per_image=16)
    resnet = build_resnet("resnet50", torch.load(workdir / "backbone.pth", weights_only=True))
    model = build_detector(spec, len(loaded.classes), resnet, "resnet50", [64], 64, 96).train()
    losses = model([image], [target])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []  # FREEZE_AT 0: the stem, res2..res4, res5 + extra norm, RPN, box and mask heads
    assert model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0
    assert model.roi_heads.box_head.norm.weight.grad.abs().sum() > 0
    assert model.backbone.conv1.weight.grad.abs().sum() > 0


def test_trials_runner_reports_mean_and_std_on_r18_fpn(workdir):
    out, summary = _run(workdir, "tiny_voc_c4.yaml", "fpn", f"model.weights={workdir / 'r18.pth'}",
                        "model.head=fpn", "trials=2", "solver.max_iter=1", "test.precise_bn_iters=1")
    assert summary["num_trials"] == 2 and len(summary["per_trial"]) == 2
    values = [m["bbox/AP50"] for m in summary["per_trial"]]
    assert summary["mean"]["bbox/AP50"] == pytest.approx(sum(values) / 2)
    assert summary["std"]["bbox/AP50"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2))
    for trial in (0, 1):
        assert json.loads((out / f"trial_{trial}" / "metrics.json").read_text()) == summary["per_trial"][trial]
    assert "resnet18-fpn" in (out / "log.txt").read_text()
