"""COCO box / mask AP through pycocotools (docs/detection.md §5.2), reported like detectron2 (x100).

Masks are the model's full-resolution probabilities thresholded at 0.5 and RLE-encoded; box results and
mask results are scored separately (a mask result's area is its mask area, as in detectron2).
pycocotools is imported lazily: ``pip install pycocotools``.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np

from ssmix.detection.datasets import ImageRecord

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def import_pycocotools():
    """``(COCO, COCOeval, mask)`` or an ImportError saying how to install pycocotools."""
    try:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ImportError("COCO evaluation needs pycocotools: pip install pycocotools") from None
    return COCO, COCOeval, mask_utils


def encode_masks(masks: np.ndarray) -> List[dict]:
    """(N, H, W) binary masks -> COCO RLEs with string counts."""
    _, _, mask_utils = import_pycocotools()
    rles = mask_utils.encode(np.asfortranarray(masks.astype(np.uint8).transpose(1, 2, 0)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def coco_stats(coco_gt, results: List[dict], iou_type: str, image_ids: Sequence[int]) -> Dict[str, float]:
    """AP/AP50/AP75/APs/APm/APl in percent (nan where COCOeval has no ground truth for the range)."""
    _, COCOeval, _ = import_pycocotools()
    if not results:
        warnings.warn(f"COCO evaluation ({iou_type}): no detections; every AP is 0")
        return {name: 0.0 for name in STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.imgIds = sorted(set(image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {
        name: float(v * 100.0) if v >= 0 else math.nan for name, v in zip(STAT_NAMES, evaluator.stats[:6])
    }


class COCOEvaluator:
    """Collects per-image outputs and scores them against the dataset's annotation JSON."""

    def __init__(
        self, json_path: str, records: Sequence[ImageRecord], category_ids: Sequence[int], with_masks: bool
    ) -> None:
        import_pycocotools()
        self.json_path, self.records = json_path, list(records)
        self.category_ids, self.with_masks = list(category_ids), with_masks
        self.results: List[tuple] = []  # (image_id, box results, mask results)

    def process(self, index: int, output: Dict) -> None:
        image_id = self.records[index].image_id
        boxes = output["boxes"].cpu().numpy().astype(np.float64)
        scores = output["scores"].cpu().numpy().tolist()
        categories = [self.category_ids[int(c) - 1] for c in output["labels"].cpu().tolist()]
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).tolist()
        box_results = [
            {"image_id": image_id, "category_id": c, "bbox": b, "score": s}
            for c, b, s in zip(categories, xywh, scores)
        ]
        mask_results = []
        if self.with_masks and len(boxes):
            binary = (output["masks"][:, 0] >= 0.5).cpu().numpy()
            mask_results = [
                {"image_id": image_id, "category_id": c, "segmentation": rle, "score": s}
                for c, rle, s in zip(categories, encode_masks(binary), scores)
            ]
        self.results.append((image_id, box_results, mask_results))

    def evaluate(self, results: Optional[List[tuple]] = None) -> Dict[str, float]:
        COCO, _, _ = import_pycocotools()
        results = self.results if results is None else results
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO(self.json_path)
        image_ids = [r[0] for r in results]
        metrics = {
            f"bbox/{k}": v
            for k, v in coco_stats(coco_gt, [d for r in results for d in r[1]], "bbox", image_ids).items()
        }
        if self.with_masks:
            metrics.update(
                {
                    f"segm/{k}": v
                    for k, v in coco_stats(
                        coco_gt, [d for r in results for d in r[2]], "segm", image_ids
                    ).items()
                }
            )
        return metrics
