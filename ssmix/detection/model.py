"""torchvision detectors set up as detectron2's R50-C4 (MoCo protocol) or R-FPN (docs/detection.md §4.2).

C4: the trunk is stem + res2..res4 (stride 16, 1024 channels); the encoder's res5 plus a new BatchNorm
(MoCo's ``Res5ROIHeadsExtraNorm``) is the RoI head shared by the box and mask branches; RoIs are pooled
with aligned RoIAlign (ROIAlignV2) at 14x14. FPN: res2..res5 + FPN (BN in its convs), 2-FC box head,
4-conv mask head. Both use detectron2's losses (L1 box regression, SMOOTH_L1_BETA 0), its predictor
initialisation, unrounded anchors and trainable BN everywhere (FREEZE_AT 0).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.boxes import box_area

from ssmix.config import ConfigError
from ssmix.detection.schema import ModelSpec, check_head_arch, rpn_topk
from ssmix.models.backbones import STAGE_CHANNELS

# The _moco overlay's PIXEL_MEAN / PIXEL_STD divided by 255 (RGB input, docs/detection.md §1.2 / §1.4).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
ANCHOR_SIZES = (32, 64, 128, 256, 512)
ASPECT_RATIOS = (0.5, 1.0, 2.0)
C4_STRIDE = 16
FPN_STRIDES = (4, 8, 16, 32, 64)  # p2..p6
FPN_CHANNELS = 256
SIZE_DIVISIBILITY = 32


class FixedStrideAnchorGenerator(AnchorGenerator):
    """detectron2's DefaultAnchorGenerator (OFFSET 0): unrounded cell anchors, known per-level strides.

    torchvision rounds the cell anchors and infers strides as ``image_size // grid_size``, which is wrong
    for p6 when the padded size is an odd multiple of 32.
    """

    def __init__(self, sizes: Sequence[Sequence[int]], strides: Sequence[int]) -> None:
        super().__init__(tuple(tuple(s) for s in sizes), (ASPECT_RATIOS,) * len(sizes))
        self.strides = tuple(strides)

    def generate_anchors(
        self, scales, aspect_ratios, dtype=torch.float32, device=torch.device("cpu")
    ) -> Tensor:
        scales = torch.as_tensor(scales, dtype=dtype, device=device)
        ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
        widths = torch.sqrt(scales[None, :] ** 2 / ratios[:, None]).reshape(-1)  # ratio = height / width
        heights = (ratios[:, None] * widths.view(len(ratios), -1)).reshape(-1)
        return torch.stack([-widths, -heights, widths, heights], dim=1) / 2

    def forward(self, image_list: ImageList, feature_maps: List[Tensor]) -> List[Tensor]:
        if len(feature_maps) != len(self.strides):
            raise ValueError(
                f"anchor generator: {len(feature_maps)} feature maps for {len(self.strides)} strides"
            )
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        grid_sizes = [list(f.shape[-2:]) for f in feature_maps]
        strides = [[torch.tensor(s, device=device), torch.tensor(s, device=device)] for s in self.strides]
        self.set_cell_anchors(dtype, device)
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [anchors] * len(image_list.image_sizes)


def fpn_levels(
    boxes: Tensor, strides: Sequence[int], canonical_box_size: int = 224, canonical_level: int = 4
) -> Tensor:
    """Index into ``strides`` of the pyramid level of each box (FPN eq. 1, detectron2's assignment)."""
    min_level, max_level = int(math.log2(strides[0])), int(math.log2(strides[-1]))
    sizes = torch.sqrt(box_area(boxes))
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_box_size + 1e-8))
    return (levels.clamp(min=min_level, max=max_level) - min_level).to(torch.int64)


class AlignedRoIAlign(MultiScaleRoIAlign):
    """MultiScaleRoIAlign with ``aligned=True`` (detectron2's ROIAlignV2) and fixed feature strides."""

    def __init__(
        self, featmap_names: Sequence[str], output_size: int, strides: Sequence[int], sampling_ratio: int = 0
    ) -> None:
        super().__init__(list(featmap_names), output_size, sampling_ratio)
        self.strides = tuple(strides)

    def forward(
        self, x: Dict[str, Tensor], boxes: List[Tensor], image_shapes: List[Tuple[int, int]]
    ) -> Tensor:
        features = [x[name] for name in self.featmap_names]
        rois = torch.cat([torch.cat([b.new_full((len(b), 1), i), b], dim=1) for i, b in enumerate(boxes)])

        def pool(feature: Tensor, selected: Tensor, stride: int) -> Tensor:
            return roi_align(
                feature,
                selected,
                self.output_size,
                spatial_scale=1.0 / stride,
                sampling_ratio=self.sampling_ratio,
                aligned=True,
            )

        if len(features) == 1:
            return pool(features[0], rois, self.strides[0])
        levels = fpn_levels(rois[:, 1:], self.strides)
        out = rois.new_zeros((len(rois), features[0].shape[1]) + self.output_size)
        for level, (feature, stride) in enumerate(zip(features, self.strides)):
            index = torch.nonzero(levels == level).squeeze(1)
            out[index] = pool(feature, rois[index], stride).to(out.dtype)
        return out


class C4Trunk(nn.Sequential):
    """stem + res2..res4 of a torchvision ResNet-50: one stride-16 map ``res4`` with 1024 channels."""

    out_channels = 1024

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__(
            OrderedDict(
                (name, getattr(resnet, name))
                for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")
            )
        )

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        return OrderedDict(res4=super().forward(x))


class Res5Head(nn.Sequential):
    """The encoder's res5 stage (first block stride 2: 14x14 RoIs -> 7x7x2048) + MoCo's extra BatchNorm."""

    def __init__(self, layer4: nn.Module, channels: int) -> None:
        super().__init__(OrderedDict(res5=layer4, norm=nn.BatchNorm2d(channels)))


class PooledPredictor(FastRCNNPredictor):
    """FastRCNNPredictor on the spatial mean of the res5 maps (C4)."""

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        return super().forward(x.mean(dim=(2, 3)))


class Detectron2RPN(RegionProposalNetwork):
    """RPN with detectron2's loss: L1 box loss (SMOOTH_L1_BETA 0) and sums normalised by
    ``batch_size_per_image * num_images`` for both objectness and boxes."""

    def compute_loss(
        self,
        objectness: Tensor,
        pred_bbox_deltas: Tensor,
        labels: List[Tensor],
        regression_targets: List[Tensor],
    ) -> Tuple[Tensor, Tensor]:
        positive, negative = self.fg_bg_sampler(labels)
        positive = torch.cat(positive).bool()
        sampled = positive | torch.cat(negative).bool()
        normalizer = self.fg_bg_sampler.batch_size_per_image * len(labels)
        targets = torch.cat(regression_targets)
        box_loss = F.l1_loss(pred_bbox_deltas[positive], targets[positive], reduction="sum") / normalizer
        objectness_loss = (
            F.binary_cross_entropy_with_logits(
                objectness.flatten()[sampled], torch.cat(labels)[sampled], reduction="sum"
            )
            / normalizer
        )
        return objectness_loss, box_loss


def fast_rcnn_losses(
    class_logits: Tensor, box_regression: Tensor, labels: List[Tensor], regression_targets: List[Tensor]
) -> Dict[str, Tensor]:
    """detectron2's FastRCNNOutputLayers losses: mean cross-entropy over sampled RoIs, and the L1 loss of
    the ground-truth class's deltas over foreground RoIs summed and divided by the number of RoIs."""
    labels_all = torch.cat(labels)
    targets = torch.cat(regression_targets)
    foreground = torch.nonzero(labels_all > 0).squeeze(1)
    deltas = box_regression.reshape(len(labels_all), -1, 4)[foreground, labels_all[foreground]]
    box_loss = F.l1_loss(deltas, targets[foreground], reduction="sum") / max(labels_all.numel(), 1)
    return {"loss_classifier": F.cross_entropy(class_logits, labels_all), "loss_box_reg": box_loss}


def mask_targets(gt_masks: Tensor, boxes: Tensor, matched: Tensor, size: int) -> Tensor:
    """Binary ``size x size`` targets: each box's ground-truth mask cropped and resized with aligned
    RoIAlign and thresholded at 0.5 (detectron2's BitMasks.crop_and_resize)."""
    rois = torch.cat([matched[:, None].to(boxes.dtype), boxes], dim=1)
    crops = roi_align(gt_masks[:, None].to(boxes.dtype), rois, (size, size), 1.0, 0, aligned=True)
    return (crops[:, 0] >= 0.5).to(boxes.dtype)


def mask_loss(
    mask_logits: Tensor,
    proposals: List[Tensor],
    labels: List[Tensor],
    matched: List[Tensor],
    gt_masks: List[Tensor],
) -> Tensor:
    """Mean per-pixel BCE of the ground-truth class's mask logits over the foreground RoIs."""
    if mask_logits.shape[0] == 0:
        return mask_logits.sum() * 0.0
    size = mask_logits.shape[-1]
    targets = torch.cat([mask_targets(m, p, i, size) for m, p, i in zip(gt_masks, proposals, matched)])
    labels_all = torch.cat(labels)
    logits = mask_logits[torch.arange(len(labels_all), device=labels_all.device), labels_all]
    return F.binary_cross_entropy_with_logits(logits, targets)


class Detectron2RoIHeads(RoIHeads):
    """torchvision's RoIHeads (sampling, matching, post-processing) with detectron2's losses.

    With ``mask_head=None`` and a mask predictor (C4), the mask branch reuses the box branch's res5
    features of the foreground RoIs in training and recomputes res5 on the final boxes at test time.
    """

    def has_mask(self) -> bool:
        return self.mask_predictor is not None

    def _mask_features(
        self, features: Dict[str, Tensor], boxes: List[Tensor], image_shapes: List[Tuple[int, int]]
    ) -> Tensor:
        if self.mask_head is None:  # C4: res5 + extra norm on the boxes
            return self.box_head(self.box_roi_pool(features, boxes, image_shapes))
        return self.mask_head(self.mask_roi_pool(features, boxes, image_shapes))

    def forward(
        self,
        features: Dict[str, Tensor],
        proposals: List[Tensor],
        image_shapes: List[Tuple[int, int]],
        targets: Optional[List[Dict[str, Tensor]]] = None,
    ):
        if not self.training:
            return self._inference(features, proposals, image_shapes), {}
        proposals, matched, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        losses = fast_rcnn_losses(class_logits, box_regression, labels, regression_targets)
        if self.has_mask():
            foreground = [torch.nonzero(lab > 0).squeeze(1) for lab in labels]
            fg_boxes = [p[f] for p, f in zip(proposals, foreground)]
            if self.mask_head is None:
                mask_features = box_features[torch.cat(labels) > 0]
            else:
                mask_features = self._mask_features(features, fg_boxes, image_shapes)
            losses["loss_mask"] = mask_loss(
                self.mask_predictor(mask_features),
                fg_boxes,
                [lab[f] for lab, f in zip(labels, foreground)],
                [m[f] for m, f in zip(matched, foreground)],
                [t["masks"] for t in targets],
            )
        return [], losses

    def _inference(self, features, proposals, image_shapes) -> List[Dict[str, Tensor]]:
        class_logits, box_regression = self.box_predictor(
            self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        )
        boxes, scores, labels = self.postprocess_detections(
            class_logits, box_regression, proposals, image_shapes
        )
        results = [{"boxes": b, "labels": lab, "scores": s} for b, s, lab in zip(boxes, scores, labels)]
        if self.has_mask():
            logits = self.mask_predictor(self._mask_features(features, boxes, image_shapes))
            for result, prob in zip(results, maskrcnn_inference(logits, labels)):
                result["masks"] = prob
        return results


class RCNNTransform(GeneralizedRCNNTransform):
    """Normalise with the ImageNet RGB mean/std; random shortest-edge size per image in training
    (MIN_SIZE_TRAIN_SAMPLING "choice"), ``min_size_test`` in evaluation; pad to a multiple of 32."""

    def __init__(self, min_size_train: Sequence[int], min_size_test: int, max_size: int) -> None:
        super().__init__(
            tuple(min_size_train),
            max_size,
            list(IMAGE_MEAN),
            list(IMAGE_STD),
            size_divisible=SIZE_DIVISIBILITY,
        )
        self.min_size_train, self.min_size_test = tuple(min_size_train), (min_size_test,)

    def train(self, mode: bool = True) -> "RCNNTransform":
        self.min_size = self.min_size_train if mode else self.min_size_test
        return super().train(mode)


def _init_predictor(predictor: FastRCNNPredictor) -> None:
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    nn.init.zeros_(predictor.cls_score.bias)
    nn.init.zeros_(predictor.bbox_pred.bias)


def _mask_predictor(in_channels: int, num_classes: int) -> MaskRCNNPredictor:
    """Deconv 2x2/2 to 256 + ReLU + 1x1 logits (NUM_CONV 0 / CONV_DIM 256); logits init std 0.001."""
    predictor = MaskRCNNPredictor(in_channels, 256, num_classes + 1)
    nn.init.zeros_(predictor.conv5_mask.bias)
    nn.init.normal_(predictor.mask_fcn_logits.weight, std=0.001)
    nn.init.zeros_(predictor.mask_fcn_logits.bias)
    return predictor


def _xavier_fill(module: nn.Module) -> None:
    """detectron2's c2_xavier_fill on every Linear of ``module``."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_uniform_(layer.weight, a=1)
            nn.init.zeros_(layer.bias)


def build_resnet(arch: str, state_dict: Optional[Mapping[str, Tensor]] = None) -> nn.Module:
    """A torchvision ResNet with trainable BatchNorm, loaded strictly from an encoder state_dict."""
    resnet = getattr(torchvision.models, arch)(weights=None)
    resnet.fc = nn.Identity()
    if state_dict is not None:
        resnet.load_state_dict(state_dict, strict=True)
    return resnet


def _c4_parts(resnet: nn.Module, arch: str, num_classes: int) -> tuple:
    """The C4 head's (backbone, anchors, RPN channels, box pool, box head, box predictor, mask pool, mask head,
    mask input channels): res5 is the box head, on res4's 14x14 RoIs, and the mask branch shares it."""
    backbone = C4Trunk(resnet)
    anchors = FixedStrideAnchorGenerator([ANCHOR_SIZES], [C4_STRIDE])
    box_pool = AlignedRoIAlign(["res4"], 14, [C4_STRIDE])
    box_head = Res5Head(resnet.layer4, STAGE_CHANNELS[arch][4])
    box_predictor = PooledPredictor(STAGE_CHANNELS[arch][4], num_classes + 1)
    return (
        backbone,
        anchors,
        C4Trunk.out_channels,
        box_pool,
        box_head,
        box_predictor,
        None,
        None,
        STAGE_CHANNELS[arch][4],
    )


def _fpn_parts(resnet: nn.Module, arch: str, num_classes: int) -> tuple:
    """The FPN head's parts, as :func:`_c4_parts` lists them: P2-P5 (+P6 for the RPN), a 2-MLP box head on
    7x7 RoIs and four convolutions for the mask on 14x14 RoIs."""
    backbone = BackboneWithFPN(
        resnet,
        {f"layer{k}": f"p{k + 1}" for k in range(1, 5)},
        list(STAGE_CHANNELS[arch][1:]),
        FPN_CHANNELS,
        norm_layer=nn.BatchNorm2d,
    )
    anchors = FixedStrideAnchorGenerator([(s,) for s in ANCHOR_SIZES], FPN_STRIDES)
    levels = ["p2", "p3", "p4", "p5"]
    box_pool = AlignedRoIAlign(levels, 7, FPN_STRIDES[:4])
    box_head = TwoMLPHead(FPN_CHANNELS * 7 * 7, 1024)
    _xavier_fill(box_head)
    box_predictor = FastRCNNPredictor(1024, num_classes + 1)
    mask_pool = AlignedRoIAlign(levels, 14, FPN_STRIDES[:4])
    mask_head = MaskRCNNHeads(FPN_CHANNELS, [256] * 4, 1)
    return backbone, anchors, FPN_CHANNELS, box_pool, box_head, box_predictor, mask_pool, mask_head, 256


def build_detector(
    spec: ModelSpec,
    num_classes: int,
    resnet: nn.Module,
    arch: str,
    min_size_train: Sequence[int],
    min_size_test: int,
    max_size: int,
) -> GeneralizedRCNN:
    """Faster/Mask R-CNN (``spec.mask``) with a C4 or FPN head around the ResNet ``resnet``."""
    check_head_arch(spec.head, arch)
    if num_classes <= 0:
        raise ConfigError("detector: the dataset has no classes")
    topk = rpn_topk(spec)
    parts = (
        _c4_parts(resnet, arch, num_classes) if spec.head == "c4" else _fpn_parts(resnet, arch, num_classes)
    )
    backbone, anchors, rpn_channels, box_pool, box_head, box_predictor, mask_pool, mask_head, mask_in = parts
    _init_predictor(box_predictor)
    rpn = Detectron2RPN(
        anchors,
        RPNHead(rpn_channels, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=spec.rpn_batch_size_per_image,
        positive_fraction=0.5,
        pre_nms_top_n={"training": topk["pre_train"], "testing": topk["pre_test"]},
        post_nms_top_n={"training": topk["post_train"], "testing": topk["post_test"]},
        nms_thresh=0.7,
    )
    roi_heads = Detectron2RoIHeads(
        box_pool,
        box_head,
        box_predictor,
        fg_iou_thresh=0.5,
        bg_iou_thresh=0.5,
        batch_size_per_image=spec.roi_batch_size_per_image,
        positive_fraction=0.25,
        bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
        score_thresh=0.05,
        nms_thresh=0.5,
        detections_per_img=spec.detections_per_image,
        mask_roi_pool=mask_pool if spec.mask else None,
        mask_head=mask_head if spec.mask else None,
        mask_predictor=_mask_predictor(mask_in, num_classes) if spec.mask else None,
    )
    transform = RCNNTransform(min_size_train, min_size_test, max_size)
    return GeneralizedRCNN(backbone, rpn, roi_heads, transform)
