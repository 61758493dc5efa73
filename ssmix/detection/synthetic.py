"""Tiny deterministic detection datasets in the exact VOC and COCO on-disk layouts (docs/detection.md §6).

Coloured rectangles (one colour per class) on a dark background, 1-3 objects per image, images of at most
``max_side`` pixels. Every class appears as a non-difficult object in every split; the first image of
each VOC split also holds a small extra object with ``difficult=1``.

``python -m detection.synthetic ROOT`` writes both layouts under ROOT (a ``$DETECTRON2_DATASETS``).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple
from xml.etree import ElementTree as ET

import numpy as np
from PIL import Image

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
SYNTHETIC_VOC_CLASSES = ("bird", "car", "dog")  # real VOC names, so detectron2's builtin loaders read them
# Real COCO ids/names (non-contiguous ids exercise the category remapping).
SYNTHETIC_COCO_CATEGORIES = (
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
    {"id": 18, "name": "dog", "supercategory": "animal"},
)
_PALETTE = np.array(
    [
        (230, 60, 60),
        (60, 200, 60),
        (70, 110, 240),
        (240, 220, 50),
        (200, 60, 220),
        (50, 220, 220),
        (250, 150, 40),
        (160, 160, 160),
    ],
    dtype=np.uint8,
)

Box = Tuple[int, int, int, int]  # x0, y0, x1, y1: pixels x0..x1-1 and y0..y1-1 are filled


def _scene(
    rng: np.random.Generator, index: int, num_classes: int, max_side: int, with_difficult: bool
) -> Tuple[np.ndarray, List[Tuple[int, Box, bool]]]:
    """One image and its objects ``(class index, box, difficult)``; classes cycle so all are covered."""
    width = int(rng.integers(max_side * 3 // 4, max_side + 1))
    height = int(rng.integers(max_side * 5 // 8, max_side + 1))
    image = np.full((height, width, 3), 24, dtype=np.uint8)
    image += rng.integers(0, 12, size=(height, width, 1), dtype=np.uint8)
    objects: List[Tuple[int, Box, bool]] = []
    num_objects = 1 + (index % 3) if index else num_classes  # image 0 holds every class
    sizes = [
        (
            int(rng.integers(max(6, width // 6), width // 2)),
            int(rng.integers(max(6, height // 6), height // 2)),
        )
        for _ in range(num_objects)
    ]
    sizes += [(10, 10)] if with_difficult else []
    for k, (w, h) in enumerate(sizes):
        x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        label = (index + k) % num_classes
        objects.append((label, (x0, y0, x0 + w, y0 + h), k == num_objects))
        image[y0 : y0 + h, x0 : x0 + w] = _PALETTE[label % len(_PALETTE)]
    return image, objects


def _voc_xml(
    folder: str, file_name: str, width: int, height: int, objects, class_names: Sequence[str]
) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = file_name
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for label, (x0, y0, x1, y1), difficult in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = class_names[label]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(int(difficult))
        bndbox = ET.SubElement(obj, "bndbox")
        # VOC boxes are 1-based inclusive pixel indices.
        for tag, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bndbox, tag).text = str(value)
    return ET.tostring(root, encoding="utf-8")


def write_voc(
    root: str,
    classes: Sequence[str] = SYNTHETIC_VOC_CLASSES,
    num_trainval: int = 8,
    num_test: int = 4,
    years: Sequence[str] = ("2007", "2012"),
    max_side: int = 128,
    seed: int = 0,
    extension: str = ".jpg",
) -> Dict[str, List[str]]:
    """Write ``root/VOC<year>/{Annotations,ImageSets/Main,JPEGImages}``; test split for 2007 and for
    non-numeric tags (your own set, ``voc_<tag>_test``) only. Images are saved as ``<id><extension>``.

    Returns ``{"<year>_<split>": [file ids]}``.
    """
    written: Dict[str, List[str]] = {}
    for year in years:
        base = os.path.join(root, f"VOC{year}")
        for sub in ("Annotations", os.path.join("ImageSets", "Main"), "JPEGImages"):
            os.makedirs(os.path.join(base, sub), exist_ok=True)
        with_test = year == "2007" or not year.isdigit()
        splits = [("trainval", num_trainval)] + ([("test", num_test)] if with_test else [])
        rng = np.random.default_rng([seed, int(year) if year.isdigit() else sum(map(ord, year))])
        counter = 0
        for split, count in splits:
            ids = []
            for index in range(count):
                counter += 1
                file_id = f"{counter:06d}" if year == "2007" else f"{year}_{counter:06d}"
                image, objects = _scene(rng, index, len(classes), max_side, with_difficult=index == 0)
                file_name = f"{file_id}{extension}"
                Image.fromarray(image).save(
                    os.path.join(base, "JPEGImages", file_name),
                    **({"quality": 95} if extension.lower() in (".jpg", ".jpeg") else {}),
                )
                xml = _voc_xml(f"VOC{year}", file_name, image.shape[1], image.shape[0], objects, classes)
                with open(os.path.join(base, "Annotations", f"{file_id}.xml"), "wb") as f:
                    f.write(xml)
                ids.append(file_id)
            with open(os.path.join(base, "ImageSets", "Main", f"{split}.txt"), "w", encoding="utf-8") as f:
                f.write("".join(f"{i}\n" for i in ids))
            written[f"{year}_{split}"] = ids
    return written


def write_coco(
    root: str,
    categories: Sequence[Dict] = SYNTHETIC_COCO_CATEGORIES,
    num_train: int = 8,
    num_val: int = 4,
    max_side: int = 128,
    seed: int = 0,
) -> Dict[str, str]:
    """Write ``root/coco/{train2017,val2017}/*.jpg`` and ``root/coco/annotations/instances_*2017.json``.

    Boxes are ``[x, y, w, h]`` in 0-based pixels, segmentations rectangle polygons, ``iscrowd`` 0.
    Returns ``{split: json path}``.
    """
    base = os.path.join(root, "coco")
    os.makedirs(os.path.join(base, "annotations"), exist_ok=True)
    rng = np.random.default_rng([seed, 2017])
    written: Dict[str, str] = {}
    image_id = ann_id = 0
    for split, count in (("train2017", num_train), ("val2017", num_val)):
        os.makedirs(os.path.join(base, split), exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            image_id += 1
            image, objects = _scene(rng, index, len(categories), max_side, with_difficult=False)
            file_name = f"{image_id:012d}.jpg"
            Image.fromarray(image).save(os.path.join(base, split, file_name), quality=95)
            images.append(
                {"id": image_id, "file_name": file_name, "width": image.shape[1], "height": image.shape[0]}
            )
            for label, (x0, y0, x1, y1), _ in objects:
                ann_id += 1
                annotations.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": categories[label]["id"],
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": (x1 - x0) * (y1 - y0),
                        "iscrowd": 0,
                        "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
                    }
                )
        data = {
            "info": {"description": "ssmix synthetic rectangles"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": [dict(c) for c in categories],
        }
        path = os.path.join(base, "annotations", f"instances_{split}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f)
        written[split] = path
    return written


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Write tiny synthetic VOC and COCO datasets for smoke tests")
    parser.add_argument("root", help="dataset root (use it as $DETECTRON2_DATASETS or data.root)")
    parser.add_argument("--format", choices=("voc", "coco", "both"), default="both")
    parser.add_argument("--num-train", type=int, default=8)
    parser.add_argument("--num-test", type=int, default=4)
    args = parser.parse_args(argv)
    if args.format in ("voc", "both"):
        write_voc(args.root, num_trainval=args.num_train, num_test=args.num_test)
    if args.format in ("coco", "both"):
        write_coco(args.root, num_train=args.num_train, num_val=args.num_test)
    print(
        f"wrote synthetic {args.format} data under {args.root}; VOC classes: {', '.join(SYNTHETIC_VOC_CLASSES)}"
    )


if __name__ == "__main__":
    main()
