"""Which masks does the SAMix Mixer's objective prefer (digits, Fashion-MNIST)? For finished MoCo v2 runs
(encoder frozen), the Mixer's losses on held-out pairs (of two different classes) mixed with each mask
family at a fixed lambda: flat (Mixup), a CutMix box, left / right halves, masks that follow the ink (each
pixel to the source that is brighter there) or avoid it, masks that follow the objects (each pixel to the
source whose object covers it, ``ssmix/visualize/mask_stats.py`` ``foreground``), and the run's own Mixer
where it has one. Losses: SAMix-I's
two-source BCE (local) and mixup infoNCE against the run's queue (global), docs/algorithm.md §4.1, and for
a SAMix-C run its pBCE and mixup CE through the frozen cluster head, over the clusters the head assigns the
two sources, §4.2. BatchNorm runs in train mode, on each mixed batch's statistics, as in training.

    python bench/mask_objective.py runs/recipes/mocov2/seed0 "runs/recipes/mocov2_samix_c/seed2"
    python bench/mask_objective.py RUN [RUN ...] --write        # also writes docs/mask_objective[_<data>].md

Lower is what the Mixer's gradient pulls toward (its objective adds eta x global to local, eta = 0.5,
and the mask loss). ``digit corr`` is the held-out statistic of
``docs/results.md`` (``bench/recipe.py`` ``heldout_masks``) for the same masks, and ``object corr`` the
object-following correlation (``ssmix/visualize/mask_stats.py`` ``object_corr``), so either can be read
against masks built to follow the images.
"""

from __future__ import annotations

import argparse
import os
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

import recipe

#: data.name -> the table --write writes
TABLES = {
    "digits": os.path.join(recipe.ROOT, "docs", "mask_objective.md"),
    "fashion_mnist": os.path.join(recipe.ROOT, "docs", "mask_objective_fashion_mnist.md"),
}
DATASET_TITLES = {"digits": "digits", "fashion_mnist": "Fashion-MNIST"}
LAMS = (0.5, 0.3)
#: logit gain of the ink masks: soft keeps both sources at most pixels, hard gives each pixel to one
INK_GAIN = {"soft": 2.0, "hard": 20.0}


def calibrated(score: Tensor, lam: float, iterations: int = 60) -> Tensor:
    """sigmoid(score + c) with c per image (bisection) so that every mask's mean is ``lam``."""
    shape = (score.shape[0], 1, 1, 1)
    low, high = torch.full(shape, -60.0), torch.full(shape, 60.0)
    for _ in range(iterations):
        middle = (low + high) / 2
        below = torch.sigmoid(score + middle).mean(dim=(1, 2, 3), keepdim=True) < lam
        low, high = torch.where(below, middle, low), torch.where(below, high, middle)
    return torch.sigmoid(score + (low + high) / 2)


def box_masks(n: int, size: int, lam: float, generator: torch.Generator) -> Tensor:
    """CutMix: s_a = 0 in a square of area ~(1 - lam) at a random place inside the image, 1 elsewhere."""
    side = int(round(size * (1 - lam) ** 0.5))
    top, left = torch.randint(0, size - side + 1, (2, n, 1, 1), generator=generator)
    rows, cols = torch.arange(size).view(1, size, 1), torch.arange(size).view(1, 1, size)
    inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    return (~inside).float().unsqueeze(1)


def mask_families(xa: Tensor, xb: Tensor, lam: float, generator: torch.Generator) -> Dict[str, Tensor]:
    """Masks of source a, (N, 1, H, W), of mean ~``lam``. Ink is an image's channel mean (digits are light
    strokes on a dark ground)."""
    from ssmix.visualize.mask_stats import foreground

    n, size = xa.shape[0], xa.shape[-1]
    ink = (xa - xb).mean(dim=1, keepdim=True)  # > 0 where a has more ink
    objects = (foreground(xa) - foreground(xb)).view(n, 1, size, size)  # +1 only a's object, -1 only b's
    columns = torch.linspace(10, -10, size).view(1, 1, 1, size).expand(n, 1, size, size)
    return {
        "flat (Mixup)": torch.full((n, 1, size, size), lam),
        "CutMix box": box_masks(n, size, lam, generator),
        "left / right halves": calibrated(columns, lam),
        "ink-following, soft": calibrated(INK_GAIN["soft"] * ink, lam),
        "ink-following, hard": calibrated(INK_GAIN["hard"] * ink, lam),
        "ink-avoiding, soft": calibrated(-INK_GAIN["soft"] * ink, lam),
        "object-following": calibrated(INK_GAIN["hard"] * objects, lam),
    }


def objective(
    method, xa: Tensor, xb: Tensor, lam: float, negatives: Tensor, head=None
) -> Callable[[Tensor], List[Optional[float]]]:
    """mask -> the Mixer's losses of the pairs mixed with it, their own images as targets: SAMix-I's local
    (two-source BCE) and global (mixup infoNCE) terms, and with a SAMix-C cluster ``head`` its pBCE and
    mixup CE over the clusters the head assigns the two sources (docs/algorithm.md §4.1, §4.2)."""
    from ssmix.losses.contrastive import mixup_info_nce, two_source_bce
    from ssmix.mixers.base import blend
    from ssmix.mixers.samix.losses import mixup_cross_entropy, pair_bce

    key_a, key_b = method.embed_target(xa), method.embed_target(xb)
    lams = torch.full((xa.shape[0],), lam)
    if head is not None:
        y_a, y_b = head(key_a).argmax(dim=1), head(key_b).argmax(dim=1)
        ones = torch.ones_like(lams)

    def losses(mask: Tensor) -> List[Optional[float]]:
        z = method.embed_target(blend(xa, xb, mask))
        found: List[Optional[float]] = [
            float(two_source_bce(z, key_a, key_b, lams, method.temperature).mean()),
            float(mixup_info_nce(z, key_a, key_b, lams, negatives, method.temperature).mean()),
        ]
        if head is None:
            return found + [None, None]
        logits = head(z)
        return found + [
            float(pair_bce(logits, y_a, y_b, lams, ones, ones)),
            float(mixup_cross_entropy(logits, y_a, y_b, lams, ones, ones)),
        ]

    return losses


def run_rows(run_dir: str, pairs: int, train_mode: bool, seed: int = 0) -> Tuple[str, List[str]]:
    """The run's data set and its table rows: every mask family at every lambda of :data:`LAMS`. In train
    mode (as in training) BatchNorm normalises each mixed batch by its own statistics."""
    from ssmix.cli import load_pretrain_config
    from ssmix.mixers.samix.configs import SAMixIConfig
    from ssmix.visualize.mask_stats import object_corr
    from ssmix.visualize.sweep import lambda_sweep, load_pairs
    from ssmix.visualize_mix import build_model

    cfg = load_pretrain_config(os.path.join(run_dir, "config.yaml"), [])
    model = build_model(cfg, run_dir, "cpu").train(train_mode)
    method = model.method
    if not hasattr(method, "queue"):
        raise SystemExit(
            f"{run_dir}: method '{cfg.method.name}' has no key queue; this bench scores MoCo v2 runs"
        )
    held_out = load_pairs(cfg, "test", pairs)
    different = held_out.labels_a != held_out.labels_b
    different &= different.cumsum(0) <= int(different.sum()) // 8 * 8  # split BatchNorm: batches of 8k
    xa, xb = held_out.xa[different], held_out.xb[different]
    learned = getattr(getattr(model, "mixing", None), "mixer", None)
    learned = learned if getattr(learned, "learned", False) else None
    name = os.path.relpath(run_dir, recipe.ROOT)
    # weight of the global term (constant in the digits configs)
    eta = getattr(cfg.mix, "eta", SAMixIConfig().eta)
    # the Mixer's own masks first, in eval mode as visualize_mix draws them: train-mode passes below move
    # BatchNorm's running statistics
    own_masks = (
        None
        if learned is None
        else lambda_sweep(model, held_out, LAMS, seed, from_training_split=False).raw_masks[:, different]
    )
    rows = []
    with torch.no_grad():
        negatives = method.queue.snapshot()
        generator = torch.Generator().manual_seed(seed)
        for index, lam in enumerate(LAMS):
            families = mask_families(xa, xb, lam, generator)
            if own_masks is not None:
                families[f"the run's Mixer ({cfg.mix.type})"] = own_masks[index]
            losses = objective(method, xa, xb, lam, negatives, getattr(learned, "head_off", None))
            for family, masks in families.items():
                within = float(masks.flatten(1).var(dim=1).mean())
                local_i, global_i, local_c, global_c = losses(masks)
                values = [
                    local_i,
                    global_i,
                    local_i + eta * global_i,
                    local_c,
                    global_c,
                    None if local_c is None else local_c + eta * global_c,
                ]
                cells = " | ".join("-" if v is None else f"{v:.3f}" for v in values)
                rows.append(
                    f"| `{name}` | {lam:.1f} | {family} | {float(masks.mean()):.2f} | {within:.3f} | "
                    f"{recipe.digit_corr(masks, xb):+.2f} | {object_corr(masks, xa, xb):+.2f} | {cells} |"
                )
    return cfg.data.name, rows


HEADER = (
    "| run | lambda | masks | mean | within-image variance | digit corr | object corr | SAMix-I local (BCE) | "
    "SAMix-I global (infoNCE) | SAMix-I local + eta global | SAMix-C local (pBCE) | SAMix-C global (mixup CE) | "
    "SAMix-C local + eta global |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="finished run directories (MoCo v2, with or without SAMix)")
    parser.add_argument(
        "--pairs", type=int, default=256, help="held-out pairs drawn (those of one digit are dropped)"
    )
    parser.add_argument(
        "--eval-mode",
        action="store_true",
        help="BatchNorm on running statistics (default: "
        "the batch's own, as the Mixer's losses see them in training)",
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help="write the table to docs/mask_objective.md (digits runs) or docs/mask_objective_<data.name>.md",
    )
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    found = [run_rows(run_dir, args.pairs, not args.eval_mode) for run_dir in args.runs]
    datasets = {name for name, _ in found}
    table = "\n".join([HEADER, *(row for _, rows in found for row in rows)])
    print(table)
    if args.write:
        if len(datasets) != 1 or not datasets <= set(TABLES):
            raise SystemExit(
                f"--write: runs of one data set of {', '.join(TABLES)} (got {', '.join(sorted(datasets))})"
            )
        dataset = datasets.pop()
        with open(TABLES[dataset], "w", encoding="utf-8") as f:
            f.write(
                f"# What the SAMix Mixer's objective prefers on {DATASET_TITLES[dataset]} "
                f"(`bench/mask_objective.py`)\n\n"
                f"{__doc__.split(chr(10) + chr(10))[0]}\n\n{table}\n\n{FINDINGS[dataset]}\n"
            )


#: what each table says (written by hand after the runs)
FINDINGS = {
    "fashion_mnist": (
        "Reading (2026-12-08; about 230 held-out pairs of two different classes; three encoders, seed 0 each: "
        "`mocov2_s0`, the MoCo v2 recipe with no mixing, 624 steps; `samix_c_centred_s0_step200`, step 200 of a "
        "SAMix-C run whose Mixer had gone from structured to near-flat masks (within-image variance 0.1 at step 20, "
        "0.007 here: `mix.qk_init_std=0.1 mix.value_init_std=0.1 mix.centre_content=true`); `samix_c_qk0.1_s0`, a "
        "finished SAMix-C run (`mix.qk_init_std=0.1`) whose Mixer left the flat masks at step ~100 and ended "
        "near-binary, within-image variance 0.23). Which mask the objective prefers depends on the encoder it is "
        "scored through, and each SAMix-C encoder prefers the masks it was trained with: at lambda 0.5 the "
        "near-flat run's encoder ranks flat first (SAMix-C objective 2.798, halves 2.960, object-following "
        "2.967; SAMix-I 4.690 / 4.824 / 4.865), the structured run's ranks halves far ahead of flat (2.630 "
        "against 3.017; SAMix-I 4.253 against 4.653), and the MoCo v2 encoder, trained with no mixing, ranks "
        "halves first too (SAMix-I 4.859, object-following 5.123, flat 5.147). So the flat and the structured "
        "Mixers are both where their own objective points: each run's Mixer scores at or below every hand-built "
        "family under the encoder it was trained with (2.798 = flat in the near-flat run; 2.591 below halves' "
        "2.630 in the structured one). The bimodal outcome over seeds (structured masks on one seed in three) is "
        "this co-adaptation: early in training the encoder prefers flat blends and the Mixer follows, and only a "
        "Mixer that leaves the flat masks early trains an encoder that then rewards structure. Object-following "
        "masks (object corr +0.94 to +0.99) are never ranked first: at lambda 0.5 they score 0.02 below the flat "
        "blend under the MoCo v2 encoder and 0.05-0.17 above it under the SAMix-C ones, at 0.3 0.05-0.09 above "
        "it under all three, and above halves except under the near-flat encoder at 0.3. At 16 px a garment covers 63 % of "
        "the image and two garments overlap on 48 % of the pixels, so an object-following mask can only decide "
        "the 31 % that belong to one object alone, while garments are left-right symmetric, so a half keeps a "
        "recognisable garment. The object corr >= 0.3 target asks for masks this objective, on this data, ranks "
        "below halves and no better than Mixup."
    ),
    "digits": (
        "Reading. Three encoders: the MoCo v2 recipe (15 epochs, no mixing), a 6-epoch SAMix-C run (momentum "
        "0.9; its Mixer is still flat) and a 15-epoch SAMix-C run whose Mixer learned structured masks (seed 2: "
        "within-image variance 0.19, 72 % of training-mask pixels saturated). Under every encoder, at both "
        "lambdas and for both objectives, the flat Mixup mask has the lowest total loss of the six mask "
        "families; masks that follow the digits (digit corr +0.6 to +0.7, which shows the statistic reads them) "
        "cost 0.1-0.4 more, a CutMix box the most. A digit fills its 8x8 frame, so every pixel given to one "
        "source erases part of the other's strokes, while a blend keeps both. The learned Mixers sit where the "
        "objective points: the 6-epoch one scores within 0.03 of flat or below it (it is trained on these "
        "terms), and the 15-epoch one's structure costs SSL loss at lambda 0.5 (3.84 / 2.20 against flat "
        "3.50 / 1.97): it is what the mask loss's variance reward buys (beta held at 1.0, docs/algorithm.md "
        "§3.7), not a layout that follows the digits (its digit corr -0.05 to -0.09). On this data, masks "
        "that follow the digits are what SAMix's own losses penalise."
    ),
}

if __name__ == "__main__":
    main()
