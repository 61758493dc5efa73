"""Pascal VOC detection AP as detectron2's PascalVOCDetectionEvaluator reports it (docs/detection.md §5.1).

For each class and each IoU threshold in 0.50:0.05:0.95: detections of the whole test set sorted by
score; a detection is a true positive if its IoU with the best-overlapping ground truth of its image
and class is strictly greater than the threshold and that ground truth is neither difficult nor already
taken; a match to a difficult box counts as neither TP nor FP; difficult boxes are not positives. IoU
uses the VOC "+1" pixel convention on the original 1-based boxes (predictions are shifted back by +1 on
xmin/ymin). AP is the VOC07 11-point AP (VOC2007) or the area under the precision envelope (later
years). Reported x100: AP50, AP75 and AP = the mean over the 10 thresholds.
"""

from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ssmix.detection.datasets import ImageRecord

IOU_THRESHOLDS = np.arange(50, 100, 5) / 100.0  # as detectron2 computes them


def to_voc_pixels(boxes: np.ndarray) -> np.ndarray:
    """detectron2-convention (0-based continuous) boxes -> VOC 1-based inclusive boxes."""
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) + np.array([1.0, 1.0, 0.0, 0.0])


def voc_iou(boxes: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """(D, G) IoU of VOC pixel boxes, widths ``xmax - xmin + 1``."""
    boxes, gts = boxes[:, None, :], gts[None, :, :]
    iw = np.maximum(
        np.minimum(boxes[..., 2], gts[..., 2]) - np.maximum(boxes[..., 0], gts[..., 0]) + 1.0, 0.0
    )
    ih = np.maximum(
        np.minimum(boxes[..., 3], gts[..., 3]) - np.maximum(boxes[..., 1], gts[..., 1]) + 1.0, 0.0
    )
    inter = iw * ih
    area = lambda b: (b[..., 2] - b[..., 0] + 1.0) * (b[..., 3] - b[..., 1] + 1.0)  # noqa: E731
    return inter / (area(boxes) + area(gts) - inter)


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """AP of one precision/recall curve (both in detection order)."""
    if use_07_metric:  # 11-point: mean over t of the max precision at recall >= t
        points = np.arange(0.0, 1.1, 0.1)  # the reference implementation's points, float error included
        reached = recall[None, :] >= points[:, None]
        return float(np.where(reached, precision[None, :], 0.0).max(axis=1, initial=0.0).mean())
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _match(
    det_images: np.ndarray, det_boxes: np.ndarray, gt_images: np.ndarray, gt_boxes: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    """Best IoU and the index of the best-overlapping ground truth (-1: none in the image) per detection."""
    best_iou = np.full(len(det_images), -np.inf)
    best_gt = np.full(len(det_images), -1, dtype=np.int64)
    for image in np.intersect1d(det_images, gt_images):
        dets = np.nonzero(det_images == image)[0]
        gts = np.nonzero(gt_images == image)[0]
        iou = voc_iou(det_boxes[dets], gt_boxes[gts])
        best_iou[dets] = iou.max(axis=1)
        best_gt[dets] = gts[iou.argmax(axis=1)]
    return best_iou, best_gt


def class_ap(
    det_images: np.ndarray,
    det_scores: np.ndarray,
    det_boxes: np.ndarray,
    gt_images: np.ndarray,
    gt_boxes: np.ndarray,
    gt_difficult: np.ndarray,
    thresholds: Sequence[float],
    use_07_metric: bool,
) -> np.ndarray:
    """AP (fraction, not %) of one class at each threshold; boxes in VOC pixels."""
    num_positives = int((~gt_difficult).sum())
    if num_positives == 0:
        return np.zeros(len(thresholds))
    order = np.argsort(-det_scores, kind="mergesort")
    best_iou, best_gt = _match(det_images[order], det_boxes[order], gt_images, gt_boxes)
    hits_difficult = np.where(best_gt >= 0, gt_difficult[np.maximum(best_gt, 0)], False)
    aps = []
    for threshold in thresholds:
        overlapping = best_iou > threshold
        eligible = np.nonzero(overlapping & ~hits_difficult)[0]
        # The first (highest-scoring) eligible detection of each ground truth takes it; later ones are FPs.
        _, first = np.unique(best_gt[eligible], return_index=True)
        tp = np.zeros(len(order))
        tp[eligible[first]] = 1.0
        fp = (~overlapping).astype(np.float64)
        fp[eligible] = 1.0 - tp[eligible]
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / num_positives
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps.append(voc_ap(recall, precision, use_07_metric))
    return np.asarray(aps)


def evaluate_voc(
    predictions: Dict[int, Tuple[np.ndarray, np.ndarray, np.ndarray]],
    records: Sequence[ImageRecord],
    classes: Sequence[str],
    use_07_metric: bool = True,
    thresholds: Sequence[float] = tuple(IOU_THRESHOLDS),
) -> Dict[str, float]:
    """``predictions[i] = (boxes (N,4) detectron2 convention, scores (N,), labels (N,) 0-based)`` for
    ``records[i]``. Returns ``{"AP", "AP50", "AP75"}`` in percent plus ``"AP50-<class>"`` per class."""
    gt_images = np.concatenate([np.full(len(r.labels), i) for i, r in enumerate(records)] or [np.zeros(0)])
    gt_boxes = to_voc_pixels(np.concatenate([r.boxes for r in records] or [np.zeros((0, 4))]))
    gt_labels = np.concatenate([r.labels for r in records] or [np.zeros(0, dtype=np.int64)])
    gt_difficult = np.concatenate([r.difficult for r in records] or [np.zeros(0, dtype=bool)])
    keys = sorted(predictions)
    det_images = np.concatenate([np.full(len(predictions[i][1]), i) for i in keys] or [np.zeros(0)])
    det_boxes = to_voc_pixels(np.concatenate([predictions[i][0] for i in keys] or [np.zeros((0, 4))]))
    det_scores = np.concatenate([predictions[i][1] for i in keys] or [np.zeros(0)]).astype(np.float64)
    det_labels = np.concatenate([predictions[i][2] for i in keys] or [np.zeros(0, dtype=np.int64)])
    per_class = np.zeros((len(classes), len(thresholds)))
    missing: List[str] = []
    for c, name in enumerate(classes):
        g, d = gt_labels == c, det_labels == c
        if not (g & ~gt_difficult).any():
            missing.append(name)
        per_class[c] = class_ap(
            det_images[d],
            det_scores[d],
            det_boxes[d],
            gt_images[g],
            gt_boxes[g],
            gt_difficult[g],
            thresholds,
            use_07_metric,
        )
    if missing:
        warnings.warn(
            f"VOC evaluation: no non-difficult ground truth for {', '.join(missing)}; "
            f"these classes score AP 0 and still count in the mean (as in detectron2)"
        )
    mean_ap = per_class.mean(axis=0) * 100.0
    thresholds = np.asarray(thresholds)
    out = {"AP": float(mean_ap.mean())}
    for name, value in (("AP50", 0.5), ("AP75", 0.75)):
        index = np.nonzero(np.isclose(thresholds, value))[0]
        if len(index):
            out[name] = float(mean_ap[index[0]])
    if np.isclose(thresholds, 0.5).any():
        column = int(np.nonzero(np.isclose(thresholds, 0.5))[0][0])
        out.update({f"AP50-{name}": float(per_class[c, column] * 100.0) for c, name in enumerate(classes)})
    return out


class VOCEvaluator:
    """Collects per-image outputs (original image coordinates) and scores them with :func:`evaluate_voc`."""

    def __init__(self, records: Sequence[ImageRecord], classes: Sequence[str], year: int) -> None:
        self.records, self.classes = list(records), list(classes)
        self.use_07_metric = year == 2007
        self.results: List[Tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []

    def process(self, index: int, output: Dict) -> None:
        self.results.append(
            (
                index,
                output["boxes"].cpu().numpy(),
                output["scores"].cpu().numpy(),
                output["labels"].cpu().numpy() - 1,
            )
        )

    def evaluate(self, results: Optional[List] = None) -> Dict[str, float]:
        predictions = {i: (b, s, lab) for i, b, s, lab in (self.results if results is None else results)}
        metrics = evaluate_voc(predictions, self.records, self.classes, self.use_07_metric)
        return {f"bbox/{k}": v for k, v in metrics.items()}
