"""The data side of the mixed-sample figures: fixed image pairs and a mixer's outputs for them over a
sweep of lambda (docs/algorithm.md §8 for the mixers).

The sweep passes each requested lambda to the mixer as the training step passes the lambda it drew.
Other random choices (box centre, FMix noise) come from torch's global generator, reseeded with
``seed`` before every column, so a box grows around the same centre as lambda falls. It runs in eval
mode under ``torch.no_grad()`` inside ``torch.random.fork_rng``: it changes neither the model nor the
RNG streams, so the trainer can call it mid-run without breaking exact resume.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ssmix.config import Config, ConfigError
from ssmix.mixers.base import Mixer
from ssmix.mixup import MixContext, Pairing


@dataclass
class Pairs:
    """P image pairs through the eval transform (normalised), with labels and dataset indices."""

    xa: Tensor  # (P, 3, H, W)
    xb: Tensor
    labels_a: Tensor  # (P,) dataset labels, -1 = unknown
    labels_b: Tensor
    index_a: Tensor  # (P,) dataset indices
    index_b: Tensor


def choose_pairs(num_items: int, pairs: int, seed: int) -> Tuple[Tensor, Tensor]:
    """Indices (a, b) of ``pairs`` pairs, a function of ``seed`` only: the first 2P items of a seeded
    permutation (a = first P, b = next P), so no image is its own partner and, when the dataset has
    at least 2P items, no image appears twice."""
    if num_items < 2:
        raise ValueError(f"visualize_mix: the dataset has {num_items} image(s); a pair needs at least 2")
    if pairs < 1:
        raise ValueError(f"pairs={pairs}: expected at least 1 pair")
    order = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed))
    if num_items >= 2 * pairs:
        return order[:pairs], order[pairs : 2 * pairs]
    a = order[torch.arange(pairs) % num_items]
    return a, order[(torch.arange(pairs) + 1) % num_items]


def load_pairs(cfg: Config, split: str, pairs: int, device: torch.device | str = "cpu") -> Pairs:
    """Build the ``split`` dataset of ``cfg.data`` and read ``pairs`` pairs through the eval transform."""
    from ssmix.data.datasets import build_dataset, dataset_info_from_config
    from ssmix.data.transforms import build_eval_transform

    dc = cfg.data
    info = dataset_info_from_config(dc)
    dataset = build_dataset(
        dc.name,
        dc.root,
        split,
        download=dc.download,
        image_size=dc.image_size,
        num_samples=dc.num_samples,
        num_classes=info.num_classes,
        seed=cfg.seed,
    )
    transform = build_eval_transform(dc.image_size, info.mean, info.std)
    index_a, index_b = choose_pairs(len(dataset), pairs, cfg.seed)

    def read(index: Tensor) -> Tuple[Tensor, Tensor]:
        items = [dataset[int(i)] for i in index]
        images = torch.stack([transform(image) for image, _ in items]).to(device)
        return images, torch.tensor([int(label) for _, label in items], device=device)

    (xa, la), (xb, lb) = read(index_a), read(index_b)
    return Pairs(xa, xb, la, lb, index_a.to(device), index_b.to(device))


@dataclass
class Sweep:
    """The mixer's outputs for P pairs at S requested lambdas (normalised images)."""

    lams: List[float]  # (S,) requested weight of source a
    xa: Tensor  # (P, 3, H, W)
    xb: Tensor
    mixed: Tensor  # (S, P, 3, H, W)
    masks: Optional[Tensor]  # (S, P, 1, H, W) mask of source a the mixer used, or None
    raw_masks: Optional[Tensor]  # (S, P, 1, H, W) raw Mixer output s_a (learned mixers), or None
    note: str = ""  # what the figure must say about how it was made
    # (P,) dataset indices of a and b and the labels shown beside each row (-1 = unknown); label_kind names them
    index_a: Optional[Tensor] = None
    index_b: Optional[Tensor] = None
    labels_a: Optional[Tensor] = None
    labels_b: Optional[Tensor] = None
    label_kind: str = "label"

    @property
    def learned(self) -> bool:
        return self.raw_masks is not None


def sweep_lambdas(steps: int) -> List[float]:
    if steps < 2:
        raise ValueError(f"steps={steps}: expected at least 2 lambdas (0 and 1)")
    return [float(v) for v in torch.linspace(0.0, 1.0, steps)]


def _display_mixer(mixer: Mixer) -> Tuple[Mixer, str]:
    """The mixer to sweep: ManifoldMix rebuilt with ``layers=[0]`` (pixel space), others as they are."""
    from ssmix.mixers import build_mixer
    from ssmix.mixers.handcrafted import ManifoldMix

    if isinstance(mixer, ManifoldMix):
        note = (
            f"ManifoldMix: pixel-space mix only (layers forced to [0]; training mixes the online "
            f"trunk's maps at a position drawn from {list(mixer.cfg.layers)})"
        )
        return build_mixer(dataclasses.replace(mixer.cfg, layers=[0])), note
    return mixer, ""


def _sweep_labels(
    model: nn.Module, mixer: Mixer, pairs: Pairs, from_training_split: bool
) -> Tuple[Optional[Tensor], str]:
    """Labels of the 2P-row batch [a; b] and a note saying which: ODC pseudo-labels of a trained run on
    its own split, else the dataset labels; SAMix-C labels outside its cluster head become -1 (unknown)."""
    if not mixer.needs_labels:
        return None, ""
    odc = getattr(model.mixing, "odc", None)
    index = torch.cat([pairs.index_a, pairs.index_b])
    if (
        odc is not None
        and bool(odc.initialized)
        and from_training_split
        and int(index.max()) < odc.labels.shape[0]
    ):
        return odc.labels_of(index.cpu()).to(index.device), "labels: the run's ODC pseudo-labels"
    labels = torch.cat([pairs.labels_a, pairs.labels_b])
    head = getattr(mixer, "head", None)
    if isinstance(head, nn.Linear):
        labels = torch.where(labels < head.out_features, labels, torch.full_like(labels, -1))
    return labels, "labels: the dataset's (-1 = unknown)"


def _mixer_maps(mixer: Mixer, batch: Tensor, feature_maps: Optional[Tensor]) -> Optional[Tensor]:
    """Stage-3 maps a learned Mixer reads for ``batch``: the target trunk's, or SAMix-P's own trunk's."""
    if feature_maps is not None:
        return feature_maps[0]
    trunk = getattr(mixer, "trunk", None)
    if trunk is None:
        return None
    from ssmix.mixers.samix.pretrained import MAP_AT

    return trunk.run(batch, 0, MAP_AT)


def _sweep_context(
    method,
    batch: Tensor,
    perm: Tensor,
    feature_maps: Optional[Tensor],
    labels: Optional[Tensor],
    pairs: Pairs,
) -> MixContext:
    """The step's mixing context for the sweep batch [a; b] paired by ``perm`` (no keys: zeros)."""
    return MixContext(
        views=[batch, batch],
        pairing=Pairing(0, 1, perm),
        keys=torch.zeros(2, batch.shape[0], method.embed_dim, device=batch.device),
        negatives=None,
        temperature=method.temperature,
        embed_target=method.embed_target,
        online_prefix=method.online_prefix,
        feature_maps=feature_maps,
        labels=labels,
        num_classes=0,
        index=torch.cat([pairs.index_a, pairs.index_b]),
    )


def _sweep_columns(
    mixer: Mixer, ctx: MixContext, lams: Sequence[float], seed: int, p: int, net_maps: Optional[Tensor]
) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
    """(mixed images, the mixer's masks, a learned Mixer's raw masks) of rows 0..p-1 at each lambda."""
    batch = ctx.views[0]
    mixed, masks, raw = [], [], []
    for lam in lams:
        torch.manual_seed(seed)  # same geometry in every column
        res = mixer(*ctx.pairing.sources(ctx.views), lam, ctx)
        if res.start != 0:
            raise RuntimeError(f"{type(mixer).__name__} mixed at trunk position {res.start}, not pixels")
        mixed.append(res.x[:p].float())
        if res.mask is not None:
            masks.append(res.mask[:p].float().expand(p, 1, *batch.shape[-2:]))
        if net_maps is not None:
            lam_rows = torch.full((2 * p,), float(lam), device=batch.device)
            raw.append(
                mixer.net(*ctx.pairing.sources([net_maps, net_maps]), lam_rows, batch.shape[-2:])[:p].float()
            )
    return mixed, masks, raw


def lambda_sweep(
    model: nn.Module, pairs: Pairs, lams: Sequence[float], seed: int = 0, from_training_split: bool = True
) -> Sweep:
    """Run ``model.mixing.mixer`` on every pair at every lambda in ``lams`` (passed to the mixer as the
    step passes its drawn lambda).

    The batch is [a; b] (2P rows) with the partner permutation pairing row i with row P + i (and back),
    so every mixer sees its usual contract (``xb = views[view_b][perm]``, ``labels[perm]`` and
    ``feature_maps[view_b][perm]`` are the partners'); rows 0..P-1 are kept. Eval mode, no gradient, the
    RNG state and the model's mode are restored on exit."""
    if getattr(model, "mixing", None) is None:
        raise ConfigError(
            "mix.type is 'none': there is no mixer to visualise; set mix.type (e.g. mix.type=cutmix)"
        )
    method = model.method
    mixer, note = _display_mixer(model.mixing.mixer)
    p = pairs.xa.shape[0]
    device = pairs.xa.device
    batch = torch.cat([pairs.xa, pairs.xb])
    perm = torch.cat([torch.arange(p, 2 * p), torch.arange(p)]).to(device)
    cuda = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            feature_maps = None
            if mixer.needs_feature_maps is not None:
                maps = method.target_trunk().run(batch, 0, mixer.needs_feature_maps)
                feature_maps = torch.stack([maps, maps])  # views = [batch, batch]
            labels, label_note = _sweep_labels(model, mixer, pairs, from_training_split)
            note = "; ".join(n for n in (note, label_note) if n)
            shown = labels if labels is not None else torch.cat([pairs.labels_a, pairs.labels_b]).to(device)
            ctx = _sweep_context(method, batch, perm, feature_maps, labels, pairs)
            net = getattr(mixer, "net", None)
            net_maps = _mixer_maps(mixer, batch, feature_maps) if net is not None else None
            mixed, masks, raw = _sweep_columns(mixer, ctx, lams, seed, p, net_maps)
    finally:
        model.train(was_training)
    return Sweep(
        lams=[float(v) for v in lams],
        xa=pairs.xa.float(),
        xb=pairs.xb.float(),
        mixed=torch.stack(mixed),
        masks=torch.stack(masks) if len(masks) == len(mixed) else None,
        raw_masks=torch.stack(raw) if raw else None,
        note=note,
        index_a=pairs.index_a.cpu(),
        index_b=pairs.index_b.cpu(),
        labels_a=shown[:p].cpu(),
        labels_b=shown[p:].cpu(),
        label_kind="cluster" if "ODC" in label_note else "label",
    )
