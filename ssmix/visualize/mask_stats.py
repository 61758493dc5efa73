"""Do a mixer's masks follow the objects? Statistics of masks on held-out pairs (docs/fashion_mnist.md).

For images of an object on a black background (Fashion-MNIST), a mask that follows the objects keeps
image a where a's object is and b where b's is. :func:`object_corr` measures that as a correlation
with the difference of the two foregrounds; a CutMix box, placed blind to the images, scores about 0.
"""

from __future__ import annotations

from torch import Tensor


def foreground(images: Tensor) -> Tensor:
    """(P, C, H, W) images on a black background (normalised or not) -> (P, H*W) float: 1 where a pixel
    is above its image's darkest value (the background), else 0."""
    grey = images.float().mean(dim=1).flatten(1)
    return (grey > grey.amin(dim=1, keepdim=True) + 1e-3).float()


def pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise Pearson correlation of two (P, D) tensors; a constant row correlates 0."""
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


def object_corr(masks: Tensor, xa: Tensor, xb: Tensor) -> float:
    """The mean over pairs of the Pearson correlation between the mask of source a, (P, 1, H, W), and
    foreground(a) - foreground(b): 1 keeps each image's object, 0 is blind to the objects."""
    return float(pearson_rows(masks.float().flatten(1), foreground(xa) - foreground(xb)).mean())
