"""Tiny end-to-end runs of the embedded backend on CPU: Faster R-CNN C4 (VOC) and Mask R-CNN C4 (COCO)
from ssmix-style encoders, the gradient flow of one C4 step, and the multi-trial runner on R18-FPN."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from ssmix.detection import train
from ssmix.detection.datasets import DetectionDataset, load_datasets
from ssmix.detection.model import build_detector, build_resnet
from ssmix.detection.schema import ModelSpec
from ssmix.detection.synthetic import write_coco, write_voc
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
    code = train.main(
        [os.path.join(PRESETS, preset), f"data.root={workdir / 'data'}", f"output_dir={out}", *overrides]
    )
    assert code == 0
    return out, json.loads((out / "metrics.json").read_text())


def _check_metrics(metrics, names):
    for name in names:
        assert 0.0 <= metrics[name] <= 100.0 or math.isnan(metrics[name]), name


def test_faster_rcnn_c4_voc_trains_and_evaluates(workdir):
    out, summary = _run(
        workdir,
        "tiny_voc_c4.yaml",
        "voc",
        f"model.weights={workdir / 'backbone.pth'}",
        "test.precise_bn_iters=1",
    )
    assert summary["num_trials"] == 1
    _check_metrics(summary["mean"], ["bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/AP50-dog"])
    log = (out / "log.txt").read_text()
    assert "iter 2/2" in log and "evaluated voc_2007_test (2 images" in log
    final = torch.load(out / "model_final.pth", weights_only=True)["model"]
    encoder = torch.load(workdir / "backbone.pth", weights_only=True)
    # trained from the encoder
    assert not torch.equal(final["backbone.conv1.weight"], encoder["conv1.weight"])
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
    spec = ModelSpec(
        mask=True, rpn_pre_nms_topk_train=100, rpn_post_nms_topk_train=16, roi_batch_size_per_image=16
    )
    resnet = build_resnet("resnet50", torch.load(workdir / "backbone.pth", weights_only=True))
    model = build_detector(spec, len(loaded.classes), resnet, "resnet50", [64], 64, 96).train()
    losses = model([image], [target])
    assert set(losses) == {
        "loss_classifier",
        "loss_box_reg",
        "loss_mask",
        "loss_objectness",
        "loss_rpn_box_reg",
    }
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []  # FREEZE_AT 0: the stem, res2..res4, res5 + extra norm, RPN, box and mask heads
    assert model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0
    assert model.roi_heads.box_head.norm.weight.grad.abs().sum() > 0
    assert model.backbone.conv1.weight.grad.abs().sum() > 0


def test_trials_runner_reports_mean_and_std_on_r18_fpn(workdir):
    out, summary = _run(
        workdir,
        "tiny_voc_c4.yaml",
        "fpn",
        f"model.weights={workdir / 'r18.pth'}",
        "model.head=fpn",
        "trials=2",
        "solver.max_iter=1",
        "test.precise_bn_iters=1",
    )
    assert summary["num_trials"] == 2 and len(summary["per_trial"]) == 2
    values = [m["bbox/AP50"] for m in summary["per_trial"]]
    assert summary["mean"]["bbox/AP50"] == pytest.approx(sum(values) / 2)
    assert summary["std"]["bbox/AP50"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2))
    for trial in (0, 1):
        assert (
            json.loads((out / f"trial_{trial}" / "metrics.json").read_text()) == summary["per_trial"][trial]
        )
    assert "resnet18-fpn" in (out / "log.txt").read_text()


# -- your own VOC-format data: non-VOC class names, PNG images, a tag instead of a year ----------------
OWN_CLASSES = ("Tree", "Bush")


@pytest.fixture(scope="module")
def own_voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_voc")
    write_voc(str(root), classes=OWN_CLASSES, num_trainval=4, num_test=2, years=("trees",), extension=".png")
    return root


def _own_overrides(own_voc, workdir):
    return [
        f"data.root={own_voc}",
        "data.train=[voc_trees_trainval]",
        "data.test=voc_trees_test",
        f"data.classes=[{','.join(OWN_CLASSES)}]",
        f"model.weights={workdir / 'r18.pth'}",
        "model.head=fpn",
        "test.precise_bn_iters=1",
    ]


def test_own_voc_set_with_custom_classes_and_png_trains_in_the_embedded_backend(own_voc, workdir, capsys):
    out = workdir / "own"
    code = train.main(
        [os.path.join(PRESETS, "tiny_voc_c4.yaml"), *_own_overrides(own_voc, workdir), f"output_dir={out}"]
    )
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "metrics.json").read_text())
    assert {"bbox/AP50-Tree", "bbox/AP50-Bush"} <= set(summary["mean"])
    log = (out / "log.txt").read_text()
    assert "iter 2/2" in log and "evaluated voc_trees_test (2 images" in log
    assert f"encoder: loaded {len(encoder_state('resnet18'))} tensors from {workdir / 'r18.pth'}" in log


def test_voc_image_comes_from_the_xml_filename_and_is_checked_before_training(
    own_voc, workdir, tmp_path, capsys
):
    import shutil

    from PIL import Image

    from ssmix.detection.datasets import read_voc

    data = tmp_path / "data"
    shutil.copytree(own_voc, data)
    voc = data / "VOCtrees"
    # One image re-saved as TIFF under another name: only the XML's <filename> says where it is.
    Image.open(voc / "JPEGImages" / "trees_000001.png").save(voc / "JPEGImages" / "scan 1.TIF")
    (voc / "JPEGImages" / "trees_000001.png").unlink()
    xml = voc / "Annotations" / "trees_000001.xml"
    xml.write_text(xml.read_text().replace("<filename>trees_000001.png<", "<filename>scan 1.TIF<"))
    records = read_voc(str(voc), "trainval", OWN_CLASSES)
    assert [os.path.basename(r.file_name) for r in records] == ["scan 1.TIF"] + [
        f"trees_{i:06d}.png" for i in range(2, 5)
    ]
    assert sorted({int(label) for r in records for label in r.labels}) == [0, 1]
    image, _, _ = DetectionDataset(records, train=False)[0]
    assert tuple(image.shape[1:]) == (records[0].height, records[0].width)
    missing = voc / "JPEGImages" / "trees_000002.png"
    missing.unlink()
    code = train.main(
        [
            os.path.join(PRESETS, "tiny_voc_c4.yaml"),
            *_own_overrides(data, workdir),
            f"output_dir={tmp_path / 'out'}",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0] == (
        f"error: {voc / 'Annotations' / 'trees_000002.xml'}: image file {missing} not found "
        "(from <filename>, else <id>.jpg); put the image in JPEGImages/ or fix <filename>"
    )
    assert not (tmp_path / "out" / "model_final.pth").exists()


def test_unknown_class_names_the_key_to_set(own_voc):
    from ssmix.config import ConfigError
    from ssmix.detection.datasets import read_voc

    with pytest.raises(
        ConfigError,
        match=r"class 'Tree' is not in data.classes \(.*\); list your class names, "
        r"e.g. data.classes=\[Tree\]$",
    ):
        read_voc(str(own_voc / "VOCtrees"), "trainval", ["aeroplane"])


def test_detectron2_dataset_dicts_and_encoder_tensor_count(own_voc):
    from ssmix.detection.train_net import matched_tensors, voc_dataset_dicts

    dicts = voc_dataset_dicts(str(own_voc / "VOCtrees"), "test", OWN_CLASSES)
    ids = (own_voc / "VOCtrees" / "ImageSets" / "Main" / "test.txt").read_text().split()
    assert [d["image_id"] for d in dicts] == ids and all(d["file_name"].endswith(".png") for d in dicts)
    records = load_datasets(["voc_trees_test"], str(own_voc), OWN_CLASSES).records
    for d, r in zip(dicts, records):
        assert [a["bbox"] for a in d["annotations"]] == r.boxes.tolist()
        assert [a["category_id"] for a in d["annotations"]] == r.labels.tolist()
        assert {a["bbox_mode"] for a in d["annotations"]} == {0}
    model = {
        "backbone.stem.conv1.weight": (64, 3, 7, 7),
        "roi_heads.res5.0.conv1.weight": (512, 1024, 1, 1),
        "roi_heads.box_predictor.cls_score.weight": (3, 2048),
    }
    ckpt = {
        "stem.conv1.weight": torch.zeros(64, 3, 7, 7),
        "res5.0.conv1.weight": torch.zeros(512, 1024, 1, 1),
        "res4.0.conv1.weight": torch.zeros(256, 512, 1, 1),
        "stem.conv1.norm.weight": torch.zeros(3),
    }
    assert matched_tensors(model, ckpt) == 2  # res4 absent from the model, the norm's shape differs


def test_detectron2_launcher_trains_own_voc_classes(own_voc, workdir, tmp_path, monkeypatch):
    pytest.importorskip("detectron2")
    from ssmix.detection.convert import convert
    from ssmix.detection.train_net import cli

    pkl = tmp_path / "r18.pkl"
    convert(str(workdir / "r18.pth"), str(pkl))
    monkeypatch.setenv("DETECTRON2_DATASETS", str(own_voc))
    code = cli(
        [
            "--config-file",
            "pascal_voc_R_18_FPN_24k_moco.yaml",
            "--classes",
            ",".join(OWN_CLASSES),
            "MODEL.DEVICE",
            "cpu",
            "MODEL.WEIGHTS",
            str(pkl),
            "OUTPUT_DIR",
            str(tmp_path / "d2"),
            "DATASETS.TRAIN",
            "('voc_trees_trainval',)",
            "DATASETS.TEST",
            "('voc_trees_test',)",
            "SOLVER.MAX_ITER",
            "2",
            "SOLVER.IMS_PER_BATCH",
            "2",
            "SOLVER.WARMUP_ITERS",
            "1",
            "SOLVER.STEPS",
            "(1,)",
            "TEST.PRECISE_BN.ENABLED",
            "False",
            "INPUT.MIN_SIZE_TRAIN",
            "(96,)",
            "INPUT.MIN_SIZE_TEST",
            "96",
            "DATALOADER.NUM_WORKERS",
            "0",
        ]
    )
    assert code == 0
    from detectron2.data import MetadataCatalog

    assert MetadataCatalog.get("voc_trees_trainval").thing_classes == list(OWN_CLASSES)
    assert os.path.isfile(tmp_path / "d2" / "model_final.pth")


def test_detectron2_launcher_registers_own_voc_sets_with_the_class_names(own_voc, monkeypatch):
    """register_voc_sets against a stand-in of the few detectron2 catalog calls it makes (detectron2
    itself is not installable here; the test above runs the real launcher where it is)."""
    import sys
    import types

    from ssmix.config import ConfigError
    from ssmix.detection.train_net import register_voc_sets

    datasets, metadata = {"voc_trees_trainval": lambda: "builtin"}, {}

    class Metadata(types.SimpleNamespace):
        def set(self, **kwargs):
            self.__dict__.update(kwargs)

    catalog = types.SimpleNamespace(
        list=lambda: list(datasets), remove=datasets.pop, register=datasets.__setitem__
    )
    metadata_catalog = types.SimpleNamespace(
        get=lambda name: metadata.setdefault(name, Metadata()), remove=lambda name: metadata.pop(name, None)
    )
    fake = {
        "detectron2": types.ModuleType("detectron2"),
        "detectron2.data": types.SimpleNamespace(DatasetCatalog=catalog, MetadataCatalog=metadata_catalog),
        "detectron2.structures": types.SimpleNamespace(BoxMode=types.SimpleNamespace(XYXY_ABS=0)),
    }
    for name, module in fake.items():
        monkeypatch.setitem(sys.modules, name, module)
    names = ["voc_trees_trainval", "voc_trees_test", "coco_2017_train"]
    assert register_voc_sets(names, str(own_voc), OWN_CLASSES) == ["voc_trees_trainval", "voc_trees_test"]
    dicts = datasets["voc_trees_trainval"]()  # the builtin registration was replaced
    assert len(dicts) == 4 and dicts[0]["file_name"].endswith("trees_000001.png")
    meta = metadata["voc_trees_test"]
    assert (meta.thing_classes, meta.year, meta.split) == (list(OWN_CLASSES), 2012, "test")
    assert meta.dirname == str(own_voc / "VOCtrees")
    (own_voc / "VOCtrees" / "JPEGImages" / "trees_000005.png").rename(own_voc / "moved.png")
    try:
        with pytest.raises(ConfigError, match="trees_000005.png not found"):
            register_voc_sets(["voc_trees_test"], str(own_voc), OWN_CLASSES)  # checked before any training
    finally:
        (own_voc / "moved.png").rename(own_voc / "VOCtrees" / "JPEGImages" / "trees_000005.png")
