"""Fast checks of the detection package: data layouts and readers, evaluators, converter, weights loader,
config, solver, precise BN and the detector's detectron2-matching parts. The train+eval runs live in
tests/test_detection_train.py."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
from xml.etree import ElementTree as ET

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from PIL import Image

from ssmix.config import ConfigError
from ssmix.detection import convert as conv
from ssmix.detection.datasets import (
    DetectionDataset,
    GroupedInfiniteSampler,
    ImageRecord,
    load_datasets,
    read_coco,
    read_voc,
    resolve,
)
from ssmix.detection.model import (
    AlignedRoIAlign,
    Detectron2RPN,
    FixedStrideAnchorGenerator,
    build_detector,
    build_resnet,
    fast_rcnn_losses,
    fpn_levels,
    mask_targets,
)
from ssmix.detection.precise_bn import update_bn_stats
from ssmix.detection.schema import ModelSpec, load_detection_config, rpn_topk
from ssmix.detection.solver import build_optimizer, lr_factor
from ssmix.detection.synthetic import SYNTHETIC_COCO_CATEGORIES, SYNTHETIC_VOC_CLASSES, write_coco, write_voc
from ssmix.detection.voc_eval import evaluate_voc, voc_ap, voc_iou
from ssmix.detection.weights import WeightsError, load_encoder_state
from ssmix.models.backbones import build_backbone, export_state_dict
from tests.detection_helpers import PRESETS, encoder_state

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "detection", "configs")
D2_NAME = re.compile(
    r"^(stem\.conv1(\.norm)?|res[2-5]\.\d+\.(conv[1-3]|shortcut)(\.norm)?)\."
    r"(weight|bias|running_mean|running_var|num_batches_tracked)$"
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    write_voc(str(root), num_trainval=6, num_test=4)
    write_coco(str(root), num_train=6, num_val=4)
    return str(root)


@pytest.fixture(scope="module")
def r18_state():
    return encoder_state("resnet18")


@pytest.fixture(scope="module")
def r50_state():
    return encoder_state("resnet50")


# ------------------------------------------------------------------------------------------------
# Synthetic data, readers, dataset, sampler
# ------------------------------------------------------------------------------------------------


def test_synthetic_voc_layout(data_root):
    base = os.path.join(data_root, "VOC2007")
    ids = open(os.path.join(base, "ImageSets", "Main", "test.txt")).read().split()
    assert len(ids) == 4 and all("." not in i for i in ids)
    difficult, names = [], set()
    for file_id in ids:
        tree = ET.parse(os.path.join(base, "Annotations", f"{file_id}.xml"))
        width, height = int(tree.findtext("size/width")), int(tree.findtext("size/height"))
        assert width <= 128 and height <= 128
        with Image.open(os.path.join(base, "JPEGImages", f"{file_id}.jpg")) as image:
            assert image.size == (width, height) and image.mode == "RGB"
        for obj in tree.findall("object"):
            assert {c.tag for c in obj} >= {"name", "pose", "truncated", "difficult", "bndbox"}
            box = [int(obj.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")]
            assert 1 <= box[0] < box[2] <= width and 1 <= box[1] < box[3] <= height
            difficult.append(int(obj.findtext("difficult")))
            if not difficult[-1]:
                names.add(obj.findtext("name"))
    assert 1 in difficult and names == set(SYNTHETIC_VOC_CLASSES)
    assert os.path.isfile(os.path.join(data_root, "VOC2012", "ImageSets", "Main", "trainval.txt"))


def test_synthetic_is_deterministic(tmp_path):
    for sub in ("a", "b"):
        write_voc(str(tmp_path / sub), num_trainval=2, num_test=1, years=("2007",))
        write_coco(str(tmp_path / sub), num_train=2, num_val=1)
    for rel in (
        "VOC2007/JPEGImages/000001.jpg",
        "VOC2007/Annotations/000003.xml",
        "coco/annotations/instances_val2017.json",
        "coco/train2017/000000000002.jpg",
    ):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_synthetic_coco_layout(data_root):
    data = json.load(open(os.path.join(data_root, "coco", "annotations", "instances_val2017.json")))
    assert [c["id"] for c in data["categories"]] == [c["id"] for c in SYNTHETIC_COCO_CATEGORIES]
    images = {im["id"]: im for im in data["images"]}
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        assert ann["area"] == w * h and ann["iscrowd"] == 0
        assert ann["segmentation"] == [[x, y, x + w, y, x + w, y + h, x, y + h]]
        assert x + w <= images[ann["image_id"]]["width"] and y + h <= images[ann["image_id"]]["height"]
    for im in data["images"]:
        assert os.path.isfile(os.path.join(data_root, "coco", "val2017", im["file_name"]))


def test_voc_reader_shifts_to_zero_based_and_keeps_difficult(data_root):
    dirname = os.path.join(data_root, "VOC2007")
    records = read_voc(dirname, "test", SYNTHETIC_VOC_CLASSES)
    tree = ET.parse(os.path.join(dirname, "Annotations", "000007.xml"))  # first test image
    xml_boxes = [
        [float(o.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")]
        for o in tree.findall("object")
    ]
    np.testing.assert_array_equal(records[0].boxes, np.array(xml_boxes, dtype=np.float32) - [1, 1, 0, 0])
    assert records[0].difficult.tolist() == [
        int(o.findtext("difficult")) == 1 for o in tree.findall("object")
    ]
    assert records[0].difficult.any()
    names = [o.findtext("name") for o in tree.findall("object")]
    assert [SYNTHETIC_VOC_CLASSES[i] for i in records[0].labels] == names
    with pytest.raises(ConfigError, match="not in data.classes"):
        read_voc(dirname, "test", ["bird"])


def test_coco_reader_converts_boxes_and_remaps_categories(data_root):
    path = os.path.join(data_root, "coco", "annotations", "instances_train2017.json")
    records, classes, ids = read_coco(path, os.path.join(data_root, "coco", "train2017"))
    data = json.load(open(path))
    first = [a for a in data["annotations"] if a["image_id"] == records[0].image_id]
    expected = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in first)]
    np.testing.assert_array_equal(records[0].boxes, np.array(expected, dtype=np.float32))
    assert classes == ["person", "car", "dog"] and ids == [1, 3, 18]
    assert records[0].labels.tolist() == [ids.index(a["category_id"]) for a in first]


def test_resolve_dataset_names(tmp_path):
    voc = resolve("voc_2012_trainval", "/r")
    assert (voc.kind, voc.annotations, voc.split, voc.year) == ("voc", "/r/VOC2012", "trainval", 2012)
    coco = resolve("coco_2017_val", "/r")
    assert (
        coco.annotations == "/r/coco/annotations/instances_val2017.json"
        and coco.image_root == "/r/coco/val2017"
    )
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'"):
        resolve("imagenet", "/r")
    with pytest.raises(ConfigError, match="cannot mix"):
        load_datasets(["voc_2007_test", "coco_2017_val"], str(tmp_path))


def test_dataset_item_and_flip(data_root):
    pytest.importorskip("pycocotools")
    loaded = load_datasets(["coco_2017_train"], data_root)
    dataset = DetectionDataset(loaded.records, train=False, with_masks=True)
    image, target, index = dataset[1]
    record = loaded.records[1]
    assert (
        index == 1
        and image.shape == (3, record.height, record.width)
        and 0 <= image.min() <= image.max() <= 1
    )
    assert target["labels"].tolist() == (record.labels + 1).tolist()
    # A rectangle polygon rasterises to exactly its box's pixels.
    for box, mask in zip(target["boxes"].long().tolist(), target["masks"]):
        x0, y0, x1, y1 = box
        assert mask.sum() == (x1 - x0) * (y1 - y0) and mask[y0:y1, x0:x1].all()
    from ssmix.detection.datasets import hflip

    flipped_image, flipped = hflip(image, target)
    width = record.width
    expected = torch.stack(
        [
            width - target["boxes"][:, 2],
            target["boxes"][:, 1],
            width - target["boxes"][:, 0],
            target["boxes"][:, 3],
        ],
        1,
    )
    assert torch.equal(flipped["boxes"], expected)
    for box, mask in zip(flipped["boxes"].long().tolist(), flipped["masks"]):
        assert mask[box[1] : box[3], box[0] : box[2]].all()
    assert torch.equal(flipped_image.flip(-1), image)


def test_grouped_sampler_groups_aspect_and_shards_ranks():
    records = [
        ImageRecord("x", i, h, w, np.zeros((1, 4), np.float32), np.zeros(1, np.int64), np.zeros(1, bool))
        for i, (h, w) in enumerate([(10, 20), (20, 10)] * 6)
    ]
    batches = {}
    for rank in (0, 1):
        iterator = iter(GroupedInfiniteSampler(records, batch_size=2, seed=3, rank=rank, world_size=2))
        batches[rank] = [next(iterator) for _ in range(3)]  # one pass over the rank's 6 images
        for batch in batches[rank]:
            assert len(batch) == 2 and len({records[i].height > records[i].width for i in batch}) == 1
    seen0 = {i for b in batches[0] for i in b}
    seen1 = {i for b in batches[1] for i in b}
    assert seen0.isdisjoint(seen1) and len(seen0 | seen1) == 12
    again = iter(GroupedInfiniteSampler(records, batch_size=2, seed=3, rank=0, world_size=2))
    assert [next(again) for _ in range(3)] == batches[0]


# ------------------------------------------------------------------------------------------------
# VOC evaluation
# ------------------------------------------------------------------------------------------------


def _record(boxes, labels, difficult=None, index=0):
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    difficult = np.zeros(len(boxes), bool) if difficult is None else np.asarray(difficult, bool)
    return ImageRecord("x", index, 100, 100, boxes, np.asarray(labels, np.int64), difficult)


def _pred(boxes, scores, labels):
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32), np.asarray(labels))


def test_voc_iou_uses_plus_one_pixels():
    gt = np.array([[1.0, 1.0, 10.0, 10.0]])
    assert voc_iou(np.array([[1.0, 1.0, 10.0, 10.0]]), gt)[0, 0] == 1.0
    # 1 px box
    assert voc_iou(np.array([[1.0, 1.0, 1.0, 1.0]]), np.array([[1.0, 1.0, 1.0, 1.0]]))[0, 0] == 1.0
    # 5 shared columns of 10x10 boxes: 50 / (100 + 100 - 50); continuous IoU would be 36 / 126.
    assert voc_iou(np.array([[6.0, 1.0, 15.0, 10.0]]), gt)[0, 0] == pytest.approx(1 / 3)


def test_voc_ground_truth_as_predictions_scores_100(data_root):
    loaded = load_datasets(["voc_2007_test"], data_root, SYNTHETIC_VOC_CLASSES)
    predictions = {
        i: _pred(r.boxes, np.linspace(0.9, 0.5, len(r.labels)), r.labels)
        for i, r in enumerate(loaded.records)
    }
    metrics = evaluate_voc(predictions, loaded.records, loaded.classes)
    assert metrics["AP"] == metrics["AP50"] == metrics["AP75"] == 100.0
    assert all(metrics[f"AP50-{c}"] == 100.0 for c in SYNTHETIC_VOC_CLASSES)


def test_voc_iou_threshold_is_strict_and_predictions_are_shifted_back():
    records = [_record([[0, 0, 10, 10]], [0])]  # VOC pixels (1, 1, 10, 10): 10x10
    # IoU exactly 0.5 (50 / 100): not a match at 0.5, since a match needs IoU > threshold.
    exact = evaluate_voc({0: _pred([[0, 0, 10, 5]], [0.9], [0])}, records, ["a"])
    assert exact["AP50"] == 0.0 and exact["AP"] == 0.0
    # IoU 0.6 on the shifted-back box: TP at 0.50 and 0.55 only -> AP = 2/10 of 100. Without the +1 shift
    # of xmin/ymin the IoU would be 60/117 and only 0.50 would match.
    partial = evaluate_voc({0: _pred([[0, 0, 10, 6]], [0.9], [0])}, records, ["a"])
    assert partial["AP50"] == 100.0 and partial["AP75"] == 0.0 and partial["AP"] == pytest.approx(20.0)
    # A one-pixel horizontal shift: IoU 90/110 = 0.818 -> TP up to threshold 0.80 (7 of 10).
    shifted = evaluate_voc({0: _pred([[1, 0, 11, 10]], [0.9], [0])}, records, ["a"])
    assert shifted["AP75"] == 100.0 and shifted["AP"] == pytest.approx(70.0)


def test_voc_eleven_point_and_area_ap_by_hand():
    records = [_record([[0, 0, 10, 10], [50, 50, 60, 60]], [0, 0])]
    # Ranked: TP (0.9), FP (0.8), TP (0.7) -> recall .5 .5 1, precision 1 .5 .667.
    predictions = {0: _pred([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], [0.9, 0.8, 0.7], [0, 0, 0])}
    eleven = evaluate_voc(predictions, records, ["a"], use_07_metric=True)
    assert eleven["AP50"] == pytest.approx(100 * (6 * 1.0 + 5 * 2 / 3) / 11)
    area = evaluate_voc(predictions, records, ["a"], use_07_metric=False)
    assert area["AP50"] == pytest.approx(100 * (0.5 * 1.0 + 0.5 * 2 / 3))
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0]), True) == pytest.approx(1.0)


def test_voc_difficult_matches_are_ignored_and_not_positives():
    records = [_record([[0, 0, 10, 10], [50, 50, 60, 60]], [0, 0], difficult=[False, True])]
    # The detection on the difficult box ranks first: neither TP nor FP, so precision stays 1.
    predictions = {0: _pred([[50, 50, 60, 60], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])}
    assert evaluate_voc(predictions, records, ["a"])["AP50"] == 100.0
    # A duplicate of a taken ground truth is a false positive.
    duplicate = {0: _pred([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])}
    assert evaluate_voc(duplicate, records, ["a"])["AP50"] == 100.0  # the FP ranks after full recall
    early_fp = {0: _pred([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], [0.7, 0.9, 0.8], [0, 0, 0])}
    assert evaluate_voc(early_fp, records, ["a"])["AP50"] == 100.0  # ranked: TP, ignored, FP


def test_voc_class_without_ground_truth_counts_as_zero():
    records = [_record([[0, 0, 10, 10]], [0])]
    with pytest.warns(UserWarning, match="no non-difficult ground truth for b"):
        metrics = evaluate_voc({0: _pred([[0, 0, 10, 10]], [0.9], [0])}, records, ["a", "b"])
    assert metrics["AP50"] == 50.0 and metrics["AP50-b"] == 0.0


# ------------------------------------------------------------------------------------------------
# COCO evaluation
# ------------------------------------------------------------------------------------------------


def test_coco_ground_truth_as_predictions_scores_one(data_root):
    pytest.importorskip("pycocotools")
    from ssmix.detection.coco_eval import COCOEvaluator, coco_stats
    from ssmix.detection.datasets import rasterize

    path = os.path.join(data_root, "coco", "annotations", "instances_val2017.json")
    records, _, ids = read_coco(path, os.path.join(data_root, "coco", "val2017"))
    evaluator = COCOEvaluator(path, records, ids, with_masks=True)
    for index, record in enumerate(records):
        masks = np.stack([rasterize(s, record.height, record.width) for s in record.segmentations])
        evaluator.process(
            index,
            {
                "boxes": torch.from_numpy(record.boxes),
                "scores": torch.full((len(masks),), 0.9),
                "labels": torch.from_numpy(record.labels + 1),
                "masks": torch.from_numpy(masks)[:, None].float(),
            },
        )
    metrics = evaluator.evaluate()
    for task in ("bbox", "segm"):
        assert metrics[f"{task}/AP"] == metrics[f"{task}/AP50"] == metrics[f"{task}/AP75"] == 100.0
    assert math.isnan(metrics["bbox/APl"])  # no large objects: COCOeval's -1 becomes nan, as in detectron2
    from pycocotools.coco import COCO

    box_results = [d for r in evaluator.results for d in r[1]]
    raw = coco_stats(COCO(path), box_results, "bbox", [r.image_id for r in records])
    assert raw["AP"] / 100 == 1.0


# ------------------------------------------------------------------------------------------------
# Converter and weights
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_converter_maps_every_backbone_key(arch, r18_state, r50_state):
    state = r18_state if arch == "resnet18" else r50_state
    model, unmapped = conv.to_detectron2(state)
    assert unmapped == []
    assert len(model) == len(state)  # one distinct name per source key
    for key, value in state.items():
        name = conv.detectron2_name(key)
        assert D2_NAME.match(name), name
        assert model[name].shape == tuple(value.shape) and np.array_equal(model[name], value.numpy())
    assert conv.detectron2_name("bn1.running_mean") == "stem.conv1.norm.running_mean"
    assert conv.detectron2_name("layer2.0.downsample.1.weight") == "res3.0.shortcut.norm.weight"
    assert conv.detectron2_name("layer2.0.downsample.0.weight") == "res3.0.shortcut.weight"
    assert conv.detectron2_name("layer4.1.bn2.bias") == "res5.1.conv2.norm.bias"
    assert conv.detectron2_name("fc.weight") is None


def test_converter_pickle_format_and_cli(tmp_path, r18_state, capsys):
    torch.save(r18_state, tmp_path / "backbone.pth")
    out = tmp_path / "d2" / "enc.pkl"
    assert conv.main([str(tmp_path), str(out)]) == 0  # a run directory: uses its backbone.pth
    assert "resnet18" in capsys.readouterr().out
    with open(out, "rb") as f:
        data = pickle.load(f, encoding="latin1")  # how detectron2 reads it
    assert set(data) == {"model", "__author__", "matching_heuristics"}
    assert data["__author__"] == "ssmix" and data["matching_heuristics"] is True
    assert all(isinstance(v, np.ndarray) for v in data["model"].values())
    np.testing.assert_array_equal(
        data["model"]["res2.0.conv1.weight"], r18_state["layer1.0.conv1.weight"].numpy()
    )
    assert conv.main([str(tmp_path / "backbone.pth"), str(tmp_path / "x.pth")]) == 2
    assert ".pkl" in capsys.readouterr().err


def _assert_same(a, b):
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key].float(), b[key].float()), key


def test_loader_accepts_backbone_run_dir_and_torchvision(tmp_path, r18_state):
    torch.save(r18_state, tmp_path / "backbone.pth")
    for path in (tmp_path / "backbone.pth", tmp_path):
        state, arch, cifar = load_encoder_state(str(path))
        assert (arch, cifar) == ("resnet18", False)
        _assert_same(state, r18_state)
    tv = torchvision.models.resnet18().state_dict()
    torch.save(tv, tmp_path / "tv.pth")
    state, arch, _ = load_encoder_state(str(tmp_path / "tv.pth"))
    assert arch == "resnet18" and not any(k.startswith("fc.") for k in state)
    _assert_same(state, {k: v for k, v in tv.items() if not k.startswith("fc.")})


def test_loader_reads_ssmix_training_checkpoint_with_split_bn(tmp_path):
    trunk = build_backbone("resnet18", bn_splits=2)
    trunk.bn1.running_mean.copy_(torch.arange(128.0))  # (splits * C,) = (2 * 64,)
    model = {f"method.backbone.{k}": v for k, v in trunk.state_dict().items()}
    model.update({f"method.momentum_backbone.{k}": v + 1 for k, v in trunk.state_dict().items()})
    model["method.projector.0.weight"] = torch.zeros(3, 3)
    torch.save({"model": model, "step": 7}, tmp_path / "step.pt")
    state, arch, _ = load_encoder_state(str(tmp_path / "step.pt"))
    assert arch == "resnet18"
    expected = (torch.arange(64.0) + torch.arange(64.0, 128.0)) / 2
    assert torch.equal(state["bn1.running_mean"], expected)
    _assert_same(state, export_state_dict(trunk))


def test_loader_reads_moco_checkpoint(tmp_path):
    net = torchvision.models.resnet18()
    net.fc = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 128))  # MoCo v2 MLP head
    encoder = {f"module.encoder_q.{k}": v for k, v in net.state_dict().items()}
    encoder.update({f"module.encoder_k.{k}": v * 0 for k, v in net.state_dict().items()})
    encoder["module.queue"] = torch.zeros(128, 16)
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": encoder}, tmp_path / "moco.pth.tar")
    state, arch, _ = load_encoder_state(str(tmp_path / "moco.pth.tar"))
    assert arch == "resnet18"
    _assert_same(state, {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")})


def test_loader_errors_list_what_was_found(tmp_path):
    torch.save({"weights": {"a.b": torch.zeros(1)}}, tmp_path / "odd.pt")
    with pytest.raises(WeightsError, match=r"no ResNet encoder found.*'weights': \{a\.b\}"):
        load_encoder_state(str(tmp_path / "odd.pt"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("x: 1")
    with pytest.raises(WeightsError, match=r"no backbone.pth.*config.yaml"):
        load_encoder_state(str(tmp_path / "run"))
    with pytest.raises(WeightsError, match="does not exist"):
        load_encoder_state(str(tmp_path / "missing.pth"))


# ------------------------------------------------------------------------------------------------
# Config, solver, precise BN
# ------------------------------------------------------------------------------------------------


def test_presets_mirror_the_moco_configs():
    voc = load_detection_config(os.path.join(PRESETS, "voc_r50_c4_24k.yaml"))
    assert (voc.solver.max_iter, voc.solver.steps, voc.solver.warmup_iters) == (24000, [18000, 22000], 100)
    assert voc.data.train == ["voc_2007_trainval", "voc_2012_trainval"] and voc.data.test == "voc_2007_test"
    assert voc.data.min_size_train == list(range(480, 801, 32)) and not voc.model.mask
    coco = load_detection_config(os.path.join(PRESETS, "coco_r50_c4_2x.yaml"))
    assert (coco.solver.max_iter, coco.solver.steps, coco.solver.warmup_iters) == (
        180000,
        [120000, 160000],
        1000,
    )
    assert coco.model.mask and coco.data.min_size_train == list(range(640, 801, 32))
    for cfg in (voc, coco):
        assert (cfg.solver.ims_per_batch, cfg.solver.base_lr, cfg.test.precise_bn_iters) == (16, 0.02, 200)
    tiny = load_detection_config(
        os.path.join(PRESETS, "tiny_coco_c4.yaml"), ["model.head=fpn", "model.arch=resnet18"]
    )
    assert tiny.model.mask and tiny.solver.max_iter == 2 and tiny.model.head == "fpn"


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.head=c4 needs a resnet50.*use model.head=fpn"):
        load_detection_config(None, ["model.arch=resnet18"])
    with pytest.raises(ConfigError, match="unknown key 'solver.max_iters'.*max_iter"):
        load_detection_config(None, ["solver.max_iters=5"])
    with pytest.raises(ConfigError, match="solver.steps"):
        load_detection_config(None, ["solver.steps=[5,2]"])


def test_rpn_topk_defaults_follow_the_head():
    assert rpn_topk(ModelSpec()) == {
        "pre_train": 12000,
        "pre_test": 6000,
        "post_train": 2000,
        "post_test": 1000,
    }
    fpn = rpn_topk(ModelSpec(head="fpn", rpn_post_nms_topk_test=50))
    assert fpn == {"pre_train": 2000, "pre_test": 1000, "post_train": 1000, "post_test": 50}


def test_lr_schedule_warmup_and_steps():
    steps, warmup = [10, 20], 5
    assert lr_factor(0, steps, warmup) == pytest.approx(1e-3)
    assert lr_factor(2, steps, warmup) == pytest.approx(1e-3 * 0.6 + 0.4)
    assert lr_factor(5, steps, warmup) == 1.0 and lr_factor(9, steps, warmup) == 1.0
    assert lr_factor(10, steps, warmup) == pytest.approx(0.1) and lr_factor(
        25, steps, warmup
    ) == pytest.approx(0.01)


def test_optimizer_excludes_norm_parameters_from_weight_decay():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2), nn.GroupNorm(2, 4))
    optimizer = build_optimizer(model, 0.02, 1e-4)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    norm_ids = {id(p) for m in (model[1], model[3]) for p in m.parameters()}
    assert {id(p) for p in no_decay["params"]} == norm_ids
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert optimizer.defaults["momentum"] == 0.9


class _BNModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(3, momentum=0.1)

    def forward(self, images, targets):
        return {"loss": self.bn(torch.stack(images)).sum()}


def test_precise_bn_is_the_plain_average_of_batch_statistics():
    model = _BNModel().eval()
    batches = [[torch.randn(3) * (i + 1) + i for _ in range(4)] for i in range(3)]
    assert update_bn_stats(model, iter((b, None) for b in batches), num_iters=3) == 1
    means = torch.stack([torch.stack(b).mean(0) for b in batches])
    variances = torch.stack([torch.stack(b).var(0, unbiased=True) for b in batches])
    assert torch.allclose(model.bn.running_mean, means.mean(0), atol=1e-6)
    assert torch.allclose(model.bn.running_var, variances.mean(0), atol=1e-5)
    assert model.bn.momentum == 0.1 and not model.training


# ------------------------------------------------------------------------------------------------
# Detector parts
# ------------------------------------------------------------------------------------------------


def test_anchors_are_detectron2s_unrounded_cell_anchors_on_a_fixed_grid():
    generator = FixedStrideAnchorGenerator([(32, 64)], [16])
    cell = generator.cell_anchors[0]
    for size in (32, 64):
        for ratio in (0.5, 1.0, 2.0):
            w = math.sqrt(size * size / ratio)
            expected = torch.tensor([-w / 2, -ratio * w / 2, w / 2, ratio * w / 2])
            assert any(torch.allclose(row, expected, atol=1e-4) for row in cell)
    assert cell.shape == (6, 4) and not torch.equal(cell, cell.round())
    from torchvision.models.detection.image_list import ImageList

    images = ImageList(torch.zeros(1, 3, 96, 160), [(96, 160)])
    anchors = generator(images, [torch.zeros(1, 1, 6, 10)])[0]
    centers = ((anchors[:, :2] + anchors[:, 2:]) / 2).unique(dim=0)
    assert len(centers) == 60 and centers.max(0).values.tolist() == [9 * 16, 5 * 16]


def test_fpn_levels_follow_the_canonical_assignment():
    boxes = torch.tensor(
        [[0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 10, 10], [0, 0, 1000, 1000], [0, 0, 448, 448.0]]
    )
    assert fpn_levels(boxes, (4, 8, 16, 32)).tolist() == [2, 1, 0, 3, 3]


def test_aligned_pooler_matches_roi_align_aligned():
    feature = torch.randn(2, 4, 8, 8)
    boxes = [
        torch.tensor([[0.0, 0.0, 40.0, 60.0]]),
        torch.tensor([[8.0, 8.0, 100.0, 90.0], [1, 2, 30, 40.0]]),
    ]
    out = AlignedRoIAlign(["res4"], 3, [16])({"res4": feature}, boxes, [(128, 128)] * 2)
    rois = torch.tensor([[0, 0, 0, 40, 60], [1, 8, 8, 100, 90], [1, 1, 2, 30, 40.0]])
    expected = torchvision.ops.roi_align(feature, rois, 3, 1 / 16, 0, aligned=True)
    assert torch.allclose(out, expected) and not torch.allclose(
        out, torchvision.ops.roi_align(feature, rois, 3, 1 / 16, 0, aligned=False)
    )


def test_fast_rcnn_losses_are_detectron2s_l1_and_cross_entropy():
    logits = torch.randn(4, 3)
    deltas = torch.randn(4, 12)
    labels = [torch.tensor([2, 0]), torch.tensor([1, 0])]
    targets = [torch.randn(2, 4), torch.randn(2, 4)]
    losses = fast_rcnn_losses(logits, deltas, labels, targets)
    flat_targets = torch.cat(targets)
    expected_box = (
        (deltas[0, 8:12] - flat_targets[0]).abs().sum() + (deltas[2, 4:8] - flat_targets[2]).abs().sum()
    ) / 4
    assert torch.allclose(losses["loss_box_reg"], expected_box)
    assert torch.allclose(
        losses["loss_classifier"], nn.functional.cross_entropy(logits, torch.tensor([2, 0, 1, 0]))
    )


def test_rpn_loss_is_normalised_by_the_anchor_batch():
    rpn = Detectron2RPN(
        FixedStrideAnchorGenerator([(32,)], [16]),
        nn.Identity(),
        0.7,
        0.3,
        4,
        0.5,
        {"training": 10, "testing": 10},
        {"training": 10, "testing": 10},
        0.7,
    )
    labels = [torch.tensor([1.0, 0.0, -1.0, 0.0, 0.0, 0.0])]  # 1 positive, 4 negatives, 1 ignored
    objectness = torch.randn(6, 1)
    deltas, targets = torch.randn(6, 4), [torch.randn(6, 4)]
    torch.manual_seed(0)
    obj_loss, box_loss = rpn.compute_loss(objectness, deltas, labels, targets)
    assert torch.allclose(box_loss, (deltas[0] - targets[0][0]).abs().sum() / 4)  # 4 = batch per image x 1
    torch.manual_seed(0)
    _, negative = rpn.fg_bg_sampler(labels)
    sampled = torch.tensor([True, False, False, False, False, False]) | negative[0].bool()
    expected = nn.functional.binary_cross_entropy_with_logits(
        objectness[sampled, 0], labels[0][sampled], reduction="sum"
    )
    assert sampled.sum() == 4 and torch.allclose(obj_loss, expected / 4)


def test_mask_targets_crop_the_matched_ground_truth():
    gt = torch.zeros(2, 20, 20, dtype=torch.uint8)
    gt[0, :, :10] = 1  # left half
    gt[1, 10:, :] = 1  # bottom half
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 20.0, 20.0]])
    targets = mask_targets(gt, boxes, torch.tensor([0, 1]), 4)
    assert targets[0].tolist() == [[1, 1, 0, 0]] * 4
    assert targets[1].tolist() == [[0] * 4] * 2 + [[1] * 4] * 2


def test_c4_detector_loads_the_encoder_and_initialises_new_layers(r50_state):
    spec = ModelSpec(mask=True)
    model = build_detector(spec, 3, build_resnet("resnet50", r50_state), "resnet50", [96, 112], 100, 160)
    trunk = model.backbone.state_dict()
    for key in ("conv1.weight", "bn1.running_var", "layer3.5.conv3.weight", "layer1.0.downsample.1.bias"):
        assert torch.equal(trunk[key], r50_state[key])
    res5 = model.roi_heads.box_head
    assert torch.equal(res5.res5.state_dict()["2.bn3.weight"], r50_state["layer4.2.bn3.weight"])
    assert torch.equal(res5.norm.weight, torch.ones(2048)) and torch.equal(res5.norm.bias, torch.zeros(2048))
    assert model.roi_heads.mask_head is None and model.roi_heads.has_mask()  # the mask branch reuses res5
    predictor = model.roi_heads.box_predictor
    assert predictor.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert predictor.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.1)
    assert model.rpn.head.cls_logits.out_channels == 15 and model.backbone.out_channels == 1024
    assert (model.rpn._pre_nms_top_n["training"], model.rpn._post_nms_top_n["testing"]) == (12000, 1000)
    assert all(p.requires_grad for p in model.parameters())  # FREEZE_AT 0
    assert model.transform.min_size == (96, 112) and model.eval().transform.min_size == (100,)
    with pytest.raises(ConfigError, match="resnet18"):
        build_detector(spec, 3, build_resnet("resnet18"), "resnet18", [96], 96, 160)


def test_fpn_detector_runs_on_resnet18(r18_state):
    torch.manual_seed(0)
    spec = ModelSpec(head="fpn", mask=True, rpn_post_nms_topk_test=10, detections_per_image=5)
    model = build_detector(spec, 3, build_resnet("resnet18", r18_state), "resnet18", [64], 64, 96).eval()
    assert len(model.rpn.anchor_generator.strides) == 5
    assert model.rpn._pre_nms_top_n["training"] == 2000 and model.rpn._post_nms_top_n["training"] == 1000
    with torch.no_grad():
        out = model([torch.rand(3, 64, 80)])[0]
    assert out["boxes"].shape[1] == 4 and out["masks"].shape[1:] == (1, 64, 80)
    assert len(out["boxes"]) <= 5


# ------------------------------------------------------------------------------------------------
# detectron2 backend
# ------------------------------------------------------------------------------------------------


def test_detectron2_configs_hold_the_protocol_facts():
    import yaml

    def read(name):
        data = yaml.safe_load(open(os.path.join(CONFIGS, name)))
        base = data.pop("_BASE_", None)
        merged = read(base) if base else {}

        def merge(a, b):
            for k, v in b.items():
                a[k] = merge(a.get(k, {}), v) if isinstance(v, dict) else v
            return a

        return merge(merged, data)

    voc = read("pascal_voc_R_50_C4_24k_moco.yaml")
    assert voc["MODEL"]["ROI_HEADS"] == {"NAME": "Res5ROIHeadsExtraNorm", "NUM_CLASSES": 20}
    assert voc["MODEL"]["RESNETS"]["STRIDE_IN_1X1"] is False and voc["MODEL"]["BACKBONE"]["FREEZE_AT"] == 0
    assert voc["MODEL"]["PIXEL_MEAN"] == [123.675, 116.280, 103.530] and voc["INPUT"]["FORMAT"] == "RGB"
    assert voc["SOLVER"]["WARMUP_ITERS"] == 100 and voc["TEST"]["PRECISE_BN"]["ENABLED"] is True
    coco = read("coco_R_50_C4_2x_moco.yaml")
    assert coco["MODEL"]["MASK_ON"] is True and coco["SOLVER"]["MAX_ITER"] == 180000
    r18 = read("coco_R_18_FPN_2x_moco.yaml")
    assert r18["MODEL"]["RESNETS"]["DEPTH"] == 18 and r18["MODEL"]["RESNETS"]["RES2_OUT_CHANNELS"] == 64
    assert (
        r18["MODEL"]["ROI_HEADS"]["NAME"] == "StandardROIHeads"
        and r18["MODEL"]["FPN"]["NORM"] == "naiveSyncBN"
    )


def test_train_net_without_detectron2_explains_how_to_install(capsys):
    try:
        import detectron2  # noqa: F401

        pytest.skip("detectron2 is installed")
    except ImportError:
        pass
    from ssmix.detection import train_net

    with pytest.raises(ImportError, match="pip install --no-build-isolation"):
        train_net.register_extra_norm_head()
    assert train_net.cli(["--config-file", "pascal_voc_R_50_C4_24k_moco.yaml"]) == 2
    assert "github.com/facebookresearch/detectron2" in capsys.readouterr().err


def test_detectron2_reads_every_config_and_the_converted_weights(tmp_path, r50_state):
    pytest.importorskip("detectron2")
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from ssmix.detection.train_net import CONFIG_DIR, register_extra_norm_head

    register_extra_norm_head()
    for name in sorted(os.listdir(CONFIG_DIR)):
        if not name.startswith("Base"):
            get_cfg().merge_from_file(os.path.join(CONFIG_DIR, name))
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(CONFIG_DIR, "pascal_voc_R_50_C4_24k_moco.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    conv.write_detectron2_pkl(r50_state, str(tmp_path / "enc.pkl"))
    DetectionCheckpointer(model).load(str(tmp_path / "enc.pkl"))
    assert torch.equal(model.backbone.res2[0].conv1.weight, r50_state["layer1.0.conv1.weight"])
    assert torch.equal(model.roi_heads.res5[2].conv3.norm.running_var, r50_state["layer4.2.bn3.running_var"])
    assert isinstance(model.roi_heads.res5[-1], nn.BatchNorm2d)
