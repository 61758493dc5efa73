"""VOC XML / COCO JSON readers in detectron2's conventions, the training dataset and its sampler.

Conventions (docs/detection.md §4.2 item 6): VOC ``xmin``/``ymin`` minus 1, so boxes are 0-based
continuous ``[x0, y0, x1, y1]``; ``difficult`` boxes are kept for training and flagged for evaluation.
COCO ``[x, y, w, h]`` becomes ``[x, y, x + w, y + h]``; ``iscrowd=1`` annotations are left to COCOeval.
Dataset names and paths are detectron2's builtin ones under a root (``$DETECTRON2_DATASETS``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple
from xml.etree import ElementTree as ET

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from ssmix.config import ConfigError
from ssmix.data.datasets import CorruptImageError
from ssmix.detection.synthetic import VOC_CLASSES

COCO_SPLITS = {  # detectron2's builtin COCO names -> (image dir, annotation json), relative to the root
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
    "coco_2014_train": ("coco/train2014", "coco/annotations/instances_train2014.json"),
    "coco_2014_val": ("coco/val2014", "coco/annotations/instances_val2014.json"),
    "coco_2014_minival": ("coco/val2014", "coco/annotations/instances_minival2014.json"),
}
# voc_<year>_<split> (builtin) or voc_<tag>_<split> for your own VOC-format set in <root>/VOC<tag>/.
_VOC_NAME = re.compile(r"^voc_(\w+?)_(train|val|trainval|test)$")


@dataclass
class ImageRecord:
    """One image and its instances. ``labels`` are contiguous class indices starting at 0."""

    file_name: str
    image_id: int
    height: int
    width: int
    boxes: np.ndarray  # (N, 4) float32, detectron2 convention
    labels: np.ndarray  # (N,) int64
    difficult: np.ndarray  # (N,) bool; all False for COCO
    segmentations: Optional[list] = None  # COCO: per instance, a polygon list or an RLE dict


@dataclass
class DatasetInfo:
    name: str
    kind: str  # voc | coco
    image_root: str
    annotations: str  # VOC: the VOC<year> directory; COCO: the json file
    split: str = ""
    year: int = 0


@dataclass
class LoadedDataset:
    records: List[ImageRecord]
    classes: List[str]
    kind: str
    infos: List[DatasetInfo] = field(default_factory=list)


def resolve(name: str, root: str) -> DatasetInfo:
    """Where a builtin dataset name lives under ``root`` (raises with the known names)."""
    match = _VOC_NAME.match(name)
    if match:
        tag, split = match.groups()
        dirname = os.path.join(root, f"VOC{tag}")
        year = int(tag) if tag.isdigit() else 0  # 2007 selects the 11-point AP, as in detectron2
        return DatasetInfo(name, "voc", os.path.join(dirname, "JPEGImages"), dirname, split, year)
    if name in COCO_SPLITS:
        images, annotations = COCO_SPLITS[name]
        return DatasetInfo(name, "coco", os.path.join(root, images), os.path.join(root, annotations))
    raise ConfigError(
        f"data: unknown dataset '{name}'; expected voc_<year or tag>_<train|val|trainval|test> or one of "
        f"{', '.join(COCO_SPLITS)}"
    )


def _xml_int(node: ET.Element, tag: str, path: str) -> float:
    child = node.find(tag)
    if child is None or child.text is None:
        raise ConfigError(f"{path}: missing <{tag}>")
    return float(child.text)


def voc_image_path(dirname: str, file_id: str, tree: ET.ElementTree) -> str:
    """``JPEGImages/<filename>`` from the XML's ``<filename>`` (any extension), else ``JPEGImages/<id>.jpg``."""
    file_name = (tree.findtext("filename") or "").strip()
    return os.path.join(dirname, "JPEGImages", os.path.basename(file_name) if file_name else f"{file_id}.jpg")


def read_voc(dirname: str, split: str, classes: Sequence[str]) -> List[ImageRecord]:
    """Records of ``<dirname>/ImageSets/Main/<split>.txt`` from ``Annotations/<id>.xml``; every image file
    is checked to exist here, before any training starts."""
    list_file = os.path.join(dirname, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(list_file):
        raise ConfigError(f"VOC split list not found: {list_file} (set data.root or $DETECTRON2_DATASETS)")
    with open(list_file, encoding="utf-8") as f:
        file_ids = [line.strip() for line in f if line.strip()]
    index = {name: i for i, name in enumerate(classes)}
    records = []
    for number, file_id in enumerate(file_ids):
        path = os.path.join(dirname, "Annotations", f"{file_id}.xml")
        if not os.path.isfile(path):
            raise ConfigError(f"{path}: annotation of '{file_id}' (listed in {list_file}) not found")
        try:
            tree = ET.parse(path)
        except ET.ParseError as exc:
            raise ConfigError(f"{path}: invalid XML ({exc})") from None
        image_path = voc_image_path(dirname, file_id, tree)
        if not os.path.isfile(image_path):
            raise ConfigError(
                f"{path}: image file {image_path} not found (from <filename>, else <id>.jpg); "
                "put the image in JPEGImages/ or fix <filename>"
            )
        size = tree.find("size")
        if size is None:
            raise ConfigError(f"{path}: missing <size>")
        boxes, labels, difficult = [], [], []
        for obj in tree.findall("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in index:
                raise ConfigError(
                    f"{path}: class '{name}' is not in data.classes ({', '.join(classes)}); "
                    f"list your class names, e.g. data.classes=[{name}]"
                )
            bndbox = obj.find("bndbox")
            if bndbox is None:
                raise ConfigError(f"{path}: object without <bndbox>")
            x0, y0, x1, y1 = (_xml_int(bndbox, t, path) for t in ("xmin", "ymin", "xmax", "ymax"))
            boxes.append([x0 - 1.0, y0 - 1.0, x1, y1])  # 1-based inclusive -> 0-based continuous
            labels.append(index[name])
            difficult.append(int(obj.findtext("difficult") or 0) == 1)
        records.append(
            ImageRecord(
                image_path,
                number,
                int(_xml_int(size, "height", path)),
                int(_xml_int(size, "width", path)),
                np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                np.asarray(labels, dtype=np.int64),
                np.asarray(difficult, dtype=bool),
            )
        )
    return records


def read_coco(json_path: str, image_root: str) -> Tuple[List[ImageRecord], List[str], List[int]]:
    """Records (non-crowd instances with a positive box), class names and COCO category ids."""
    if not os.path.isfile(json_path):
        raise ConfigError(f"COCO annotations not found: {json_path} (set data.root or $DETECTRON2_DATASETS)")
    with open(json_path, encoding="utf-8") as f:
        data = json.load(f)
    categories = sorted(data["categories"], key=lambda c: c["id"])
    contiguous = {c["id"]: i for i, c in enumerate(categories)}
    per_image: Dict[int, list] = {}
    for ann in data.get("annotations", []):
        per_image.setdefault(ann["image_id"], []).append(ann)
    records = []
    for image in sorted(data["images"], key=lambda im: im["id"]):
        boxes, labels, segms = [], [], []
        for ann in per_image.get(image["id"], []):
            x, y, w, h = (float(v) for v in ann["bbox"])
            segm = ann.get("segmentation")
            if isinstance(segm, list):  # drop degenerate polygons, as detectron2's loader does
                segm = [p for p in segm if len(p) % 2 == 0 and len(p) >= 6]
                if not segm:
                    continue
            if ann.get("iscrowd", 0) or w <= 1e-5 or h <= 1e-5:
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(contiguous[ann["category_id"]])
            segms.append(segm)
        records.append(
            ImageRecord(
                os.path.join(image_root, image["file_name"]),
                int(image["id"]),
                int(image["height"]),
                int(image["width"]),
                np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                np.asarray(labels, dtype=np.int64),
                np.zeros(len(labels), dtype=bool),
                segms,
            )
        )
    return records, [c["name"] for c in categories], [c["id"] for c in categories]


def load_datasets(names: Sequence[str], root: str, classes: Optional[Sequence[str]] = None) -> LoadedDataset:
    """Concatenate datasets of one kind (all VOC or all COCO) with one class list."""
    infos = [resolve(name, root) for name in names]
    kinds = {info.kind for info in infos}
    if len(kinds) != 1:
        raise ConfigError(f"data: cannot mix VOC and COCO datasets ({', '.join(names)})")
    kind = kinds.pop()
    records: List[ImageRecord] = []
    if kind == "voc":
        class_list = list(classes or VOC_CLASSES)
        for info in infos:
            records += read_voc(info.annotations, info.split, class_list)
        return LoadedDataset(records, class_list, kind, infos)
    if classes:
        raise ConfigError("data.classes applies to VOC datasets only; COCO classes come from the JSON")
    class_list: Optional[List[str]] = None
    for info in infos:
        part, names_here, _ = read_coco(info.annotations, info.image_root)
        if class_list is not None and names_here != class_list:
            raise ConfigError(f"data: {info.name} has different categories from {infos[0].name}")
        class_list = names_here
        records += part
    return LoadedDataset(records, class_list or [], kind, infos)


def rasterize(segmentation, height: int, width: int) -> np.ndarray:
    """One instance's polygons or RLE as an (H, W) uint8 mask, rasterised by pycocotools (as detectron2)."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise ImportError("COCO masks need pycocotools: pip install pycocotools") from None
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(np.uint8)


class DetectionDataset(Dataset):
    """``(image [3,H,W] float in [0,1] RGB, target, index)``; targets use labels 1..K (0 = background).

    Training applies a horizontal flip with probability 0.5; resizing happens in the model's transform.
    """

    def __init__(self, records: Sequence[ImageRecord], train: bool, with_masks: bool = False) -> None:
        self.records, self.train, self.with_masks = list(records), train, with_masks

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Tuple[Tensor, Dict[str, Tensor], int]:
        record = self.records[index]
        try:
            with Image.open(record.file_name) as pil:
                pixels = np.array(pil.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as exc:
            raise CorruptImageError(
                f"{record.file_name}: not a readable image ({type(exc).__name__}: {exc}); "
                "delete or replace the file"
            ) from None
        if pixels.shape[:2] != (record.height, record.width):
            raise ValueError(
                f"{record.file_name}: image is {pixels.shape[:2]} (H, W) but its annotation "
                f"says ({record.height}, {record.width})"
            )
        image = torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255.0)
        target = {
            "boxes": torch.from_numpy(record.boxes.copy()),
            "labels": torch.from_numpy(record.labels + 1),
        }
        if self.with_masks:
            masks = [rasterize(s, record.height, record.width) for s in record.segmentations or []]
            target["masks"] = (
                torch.from_numpy(np.stack(masks))
                if masks
                else torch.zeros((0, record.height, record.width), dtype=torch.uint8)
            )
        if self.train and torch.rand(()) < 0.5:
            image, target = hflip(image, target)
        return image, target, index


def hflip(image: Tensor, target: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Mirror an image and its boxes (``x -> W - x`` in continuous coordinates) and masks."""
    width = image.shape[-1]
    out = dict(target)
    boxes = target["boxes"]
    out["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
    if "masks" in target:
        out["masks"] = target["masks"].flip(-1)
    return image.flip(-1), out


def collate(batch):
    return tuple(zip(*batch))


class GroupedInfiniteSampler(Sampler):
    """Endless batches of indices for one process: reshuffled each pass (seeded), every ``world_size``-th
    index for this ``rank``, grouped so a batch holds only landscape or only portrait images
    (detectron2's ASPECT_RATIO_GROUPING)."""

    def __init__(
        self, records: Sequence[ImageRecord], batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if not records:
            raise ConfigError("data.train: no training image with annotations")
        self.portrait = np.array([r.height > r.width for r in records])
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size

    def __iter__(self) -> Iterator[List[int]]:
        generator = torch.Generator().manual_seed(self.seed)
        buckets: Tuple[List[int], List[int]] = ([], [])
        while True:
            order = torch.randperm(len(self.portrait), generator=generator)[self.rank :: self.world_size]
            for index in order.tolist():
                bucket = buckets[int(self.portrait[index])]
                bucket.append(index)
                if len(bucket) == self.batch_size:
                    yield list(bucket)
                    bucket.clear()
