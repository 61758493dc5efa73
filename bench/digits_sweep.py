"""The search behind the digits recipe (``configs/digits/``): named variants x seeds, each judged by
frozen-feature accuracy on held-out digits against a random encoder of the same geometry.

    python bench/digits_sweep.py                       # every variant, seed 0 (screening)
    python bench/digits_sweep.py --only "lr 0.12" flips --seeds 0 1 2
    python bench/digits_sweep.py --table               # print the table of what has run

Runs go to ``runs/recipes/`` (see ``bench/recipe.py``) and are skipped when already finished, so the
sweep can be stopped and resumed; ``--table`` writes ``docs/digits_sweep.md``. Run one sweep at a
time on a 2-core machine (parallel runs make the minutes meaningless).
"""

from __future__ import annotations

import argparse
import os
from typing import Dict, List, Tuple

import recipe

MOCO = os.path.join(recipe.ROOT, "configs", "digits", "mocov2.yaml")
SAMIX_I = os.path.join(recipe.ROOT, "configs", "digits", "mocov2_samix_i.yaml")
SAMIX_C = os.path.join(recipe.ROOT, "configs", "digits", "mocov2_samix_c.yaml")
TABLE = os.path.join(recipe.ROOT, "docs", "digits_sweep.md")

ASYM = ["method.symmetric=false"]  # the first rounds ran the one-directional MoCo v2 loss

#: variant -> (config, overrides on top of it); the recipe in configs/digits/ is the winner
VARIANTS: Dict[str, Tuple[str, List[str]]] = {
    "recipe": (MOCO, []),
    "asymmetric": (MOCO, ASYM),
    "asym, no proj BN": (MOCO, [*ASYM, "method.proj_bn=false"]),
    "asym, t 0.1": (MOCO, [*ASYM, "method.temperature=0.1"]),
    "asym, lr 0.12": (MOCO, [*ASYM, "train.lr=0.12"]),
    "lr 0.12": (MOCO, ["train.lr=0.12"]),
    "30 epochs": (MOCO, ["train.epochs=30"]),
    "flips": (MOCO, ["data.aug.hflip_prob=0.5"]),
    "crops 0.4": (MOCO, ["data.aug.min_scale=0.4"]),
    "crops 0.5": (MOCO, ["data.aug.min_scale=0.5"]),
    "rotation 15": (MOCO, ["data.aug.rotation_prob=0.5", "data.aug.rotation_degrees=15"]),
    "queue 256": (MOCO, ["method.queue_size=256"]),
    "t 0.5": (MOCO, ["method.temperature=0.5"]),
    "queue 128": (MOCO, ["method.queue_size=128"]),
    "SAMix-I, mask loss 1.0 constant": (
        SAMIX_I,
        ["mix.mask_loss_weight=1.0", "mix.mask_loss_decay=constant"],
    ),
    "30 epochs, rotation 15": (
        MOCO,
        ["train.epochs=30", "data.aug.rotation_prob=0.5", "data.aug.rotation_degrees=15"],
    ),
    "32 px ImageNet stem": (MOCO, ["data.image_size=32", "model.cifar_stem=false"]),
    # the same images and compute per epoch (a step costs the same per image at 32-128), more steps
    "8 epochs": (MOCO, ["train.epochs=8"]),
    "6 epochs": (MOCO, ["train.epochs=6"]),
    "batch 64": (MOCO, ["train.batch_size=64"]),
    "batch 32": (MOCO, ["train.batch_size=32"]),
    "batch 32, lr 0.03": (MOCO, ["train.batch_size=32", "train.lr=0.03"]),
    # lambda as a logit offset of the Mixer's mask (docs/algorithm.md §3.2)
    "SAMix-I, lam offset": (SAMIX_I, ["mix.lam_offset=true"]),
    "SAMix-C, lam offset": (SAMIX_C, ["mix.lam_offset=true"]),
    "SAMix-C, lam offset, Mixer lr 0.2": (SAMIX_C, ["mix.lam_offset=true", "mix.mixer_lr=0.2"]),
    # a short schedule leaves a momentum-0.99 key encoder behind: 0.99^165 = 0.19 of it is still the
    # random init after 15 epochs, 0.99^66 = 0.51 after the demo's 6
    "momentum 0.9": (MOCO, ["method.momentum=0.9"]),
    "6 epochs, momentum 0.9": (MOCO, ["train.epochs=6", "method.momentum=0.9"]),
    "SAMix-C, 6 epochs, momentum 0.9": (SAMIX_C, ["train.epochs=6", "method.momentum=0.9"]),
    # bf16 autocast on a CPU with native bf16 (AVX512-BF16): 1.4x (MoCo v2) and 1.6x (SAMix-C) faster steps
    "6 epochs, momentum 0.9, bf16": (MOCO, ["train.epochs=6", "method.momentum=0.9", "train.amp=bf16"]),
    "8 epochs, momentum 0.9, bf16": (MOCO, ["train.epochs=8", "method.momentum=0.9", "train.amp=bf16"]),
    "SAMix-C, 6 epochs, momentum 0.9, bf16": (
        SAMIX_C,
        ["train.epochs=6", "method.momentum=0.9", "train.amp=bf16"],
    ),
    "SAMix-C, 8 epochs, momentum 0.9, bf16": (
        SAMIX_C,
        ["train.epochs=8", "method.momentum=0.9", "train.amp=bf16"],
    ),
    "SAMix-C, 8 epochs, momentum 0.9": (SAMIX_C, ["train.epochs=8", "method.momentum=0.9"]),
}


#: what the table says (written by hand after the runs; the numbers above are the record)
FINDINGS = (
    "Reading. BatchNorm in the projector is what lets MoCo v2 leave collapse on this budget (no proj BN: "
    "collapse_std 0.001, below random init); the symmetric loss adds a little and became the recipe. "
    "Every other change tried is within the recipe's seed-to-seed spread (its 3 seeds span 96.7-97.2 "
    "linear and 95.3-97.5 kNN) or below it: a queue of 256 keys instead of 1024 (3 seeds, same mean as the "
    "recipe), rotation of +-15 degrees, crops from 50 %, 30 epochs, temperature 0.1 or 0.5, lr 0.12, a "
    "key encoder of momentum 0.9 (at 0.99, 0.99^165 = 19 % of a 15-epoch run's key encoder is still the "
    "random init; 0.9 gave 96.1 / 96.4 against the recipe's 96.1 / 96.7 on seed 0), and smaller batches "
    "(64 or 32: 2x or 4x the steps for the same "
    "images and compute, since a step costs the same per image; not better). Shorter schedules keep the "
    "linear probe (6 epochs 96.9 over 3 seeds, 8 epochs 96.9 on seed 0) but lose kNN (6 epochs 95.2 ± 0.7; "
    "on seed 0 94.4, below that seed's random init, 95.3). `make demo` runs 6 epochs to fit its 10 "
    "minutes, with a key encoder of momentum 0.9: after 66 steps 0.99^66 = 51 % of a 0.99 key encoder is "
    "still the random init. On that schedule MoCo v2 gives 96.8 / 95.8 over 3 seeds, above each seed's "
    "random init on both probes (kNN +0.8, +0.8, +1.4; at 0.99 -0.9, +0.6, +1.4), and SAMix-C 96.6 / 95.0 "
    "(kNN -0.6, +0.3, +0.9: at 6 epochs its Mixer's masks are still flat, so it mixes like Mixup). Runs "
    "are bit-exact only at the same thread count: the recipe's seed 0 gave kNN "
    "96.4 sharing the CPU and 96.7 alone, so one seed's differences below ~1 point are noise (one "
    "held-out image is 0.28 points). No variant reaches the issue's target of random init + 3 points on "
    "both probes (~97.8 / ~97.8 over 3 seeds): on digits a random ResNet-18 is already a 94.8 / 94.8 "
    "encoder (and 93.8 / 95.5 over 3 seeds with the ImageNet stem at 64 px, which also gives 4x4 stage-3 "
    "maps at the same cost), and MoCo v2 on 1438 images gains about 2 points linear and 1.6 kNN. The "
    "target's kNN figure is what the pixels themselves give (the 16 px images flattened: kNN 97.8, linear "
    "95.3): a random trunk loses 3 kNN points to its own input, and 15 epochs of MoCo v2 win back half of "
    "them while passing the pixels on the linear probe. SAMix (docs/algorithm.md §3.2, §3.7): the SAMix "
    "rows run with lambda as a logit offset of the Mixer's mask and the per-image mask loss (the digits "
    "configs); without the offset the Mixer cannot see lambda (BatchNorm removes a batch-wide gain) and "
    "chose sources whole; a 4x larger Mixer lr (0.2) saturated the masks again (96 % of pixels by step "
    "60; stopped there, so no row). SAMix-I with the reference mask-loss weight (0.1 decaying to 0) ended "
    "with the Mixer picking one source whole (linear 94.7 / kNN 96.1, 99 % saturated masks, within-image "
    "variance 0); held at 1.0 (the row above) the Mixer draws lambda-sized regions (variance 0.23): the "
    "digits SAMix configs use that. SwAV (docs/algorithm.md §2.4): at the reference's temperature 0.1 the "
    "loss reached ln K within 3 epochs with LARS or SGD (lr 0.06, wd 5e-4), 100 or 300 prototypes, and BN "
    "on the projector's output (33-step runs, not rows here); at 0.5 it leaves ln K, and "
    "configs/digits/swav.yaml uses 0.5. Crops of the other methods: until 2026-12-02 the BYOL, SimCLR and "
    "SimSiam digits configs ran with their method bases' crops (from 8 %, 8 % and 20 %) instead of the "
    "recipe's 70 %: SimCLR 96.7 / 95.7, BYOL 94.4 / 89.0, SimSiam 94.6 / 93.0 (3 seeds each); "
    "docs/results.md now has them on the recipe's views: 96.5 / 95.9, 94.4 / 91.3, 96.3 / 92.9, within a "
    "seed spread of those. bf16 autocast (`train.amp=bf16`; this CPU computes bf16 natively, AVX512-BF16): "
    "steps 1.4x (MoCo v2) and 1.6x (SAMix-C) faster than fp32. On seed 0 at 6 epochs it gave MoCo v2 "
    "97.2 / 95.8 (fp32 96.4 / 96.1) and SAMix-C 94.7 / 95.5 (fp32 96.1 / 94.7), and at 8 epochs SAMix-C "
    "96.4 / 96.1 (fp32 96.7 / 96.4): within what one seed moves. `make demo` runs 8 epochs "
    "with it (and momentum 0.9), in the time 6 fp32 epochs took: MoCo v2 96.6 / 96.7 over 3 seeds, above "
    "each seed's random init by +3.3 / +1.4 / +0.6 linear and +1.4 / +1.7 / +2.5 kNN; SAMix-C 96.4 / 95.5, "
    "+2.5 / +0.6 / +1.7 linear and +0.8 / +0.3 / +1.1 kNN (its Mixer's masks still flat, within-image "
    "variance <= 0.001). Until 2026-12-02 `make demo` ran 6 fp32 epochs, where SAMix-C's kNN was below "
    "random init on seed 0."
)


def run_variants(names: List[str], seeds: List[int]) -> None:
    for name in names:
        config, overrides = VARIANTS[name]
        for seed in seeds:
            result = recipe.run(config, overrides, seed)
            print(
                f"[sweep] {name} seed {seed}: linear {result['linear']:.1f} kNN {result['knn']:.1f} "
                f"({result['minutes']:.1f} min, collapse_std {result.get('collapse_std', float('nan')):.3f})",
                flush=True,
            )


def table() -> str:
    rows = []
    for name, (config, overrides) in VARIANTS.items():
        results = [r for r in (recipe.finished(config, overrides, seed) for seed in range(10)) if r]
        earlier = recipe.earlier_row(TABLE, name, 2, results)
        if earlier or not results:
            rows.extend([earlier] if earlier else [])
            continue
        rows.append(
            f"| {name} | `{' '.join(overrides) or '(recipe)'}` | {len(results)} | "
            f"{recipe.mean_std([r['linear'] for r in results])} | "
            f"{recipe.mean_std([r['knn'] for r in results])} | "
            f"{recipe.mean_std([r['minutes'] for r in results])} | "
            f"{recipe.mean_std([r['collapse_std'] for r in results if 'collapse_std' in r], '{:.3f}')} |"
        )
    randoms = {
        size: recipe.heldout_accuracy("random", size, "resnet18", stem)
        for size, stem in ((16, True), (32, False), (64, False))
    }
    pixels = recipe.pixel_accuracy(16)
    return "\n".join(
        [
            "# Digits recipe sweep (`bench/digits_sweep.py`)",
            "",
            "MoCo v2, ResNet-18, held-out digits (359 images): linear probe on cached features and 20-NN "
            "(`configs/linear/digits.yaml`). Overrides are on top of `configs/digits/mocov2.yaml` "
            "(`configs/digits/mocov2_samix_i.yaml` and "
            "`mocov2_samix_c.yaml` for the SAMix rows). "
            "Minutes are wall-clock on a 2-core CPU that ran 2-4 jobs at once during the sweep: they are not "
            "comparable across rows (alone, a recipe run takes a few minutes). Every row was scored by the probe of the time, on raw features (before 2026-12-03); `docs/results.md` scores the recipe's rows with today's standardised probe, which lifts random init 1.5 linear points.",
            "",
            f"Random init (seed 0; `docs/results.md` has seeds 0-2): 16 px CIFAR stem linear "
            f"{randoms[16]['linear']:.1f} / kNN {randoms[16]['knn']:.1f}; "
            f"32 px ImageNet stem linear {randoms[32]['linear']:.1f} / kNN {randoms[32]['knn']:.1f}; "
            f"64 px ImageNet stem linear {randoms[64]['linear']:.1f} / kNN {randoms[64]['knn']:.1f}. "
            f"The 16 px pixels themselves (flattened, same probe and kNN): linear {pixels['linear']:.1f} / "
            f"kNN {pixels['knn']:.1f}.",
            "",
            "| variant | overrides | seeds | linear | kNN | minutes | collapse_std |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            FINDINGS,
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="*", default=None, help="variants to run (default: all)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--table", action="store_true", help="only write and print the table")
    args = parser.parse_args()
    if not args.table:
        unknown = [n for n in args.only or [] if n not in VARIANTS]
        if unknown:
            raise SystemExit(f"--only: unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
        run_variants(args.only or list(VARIANTS), args.seeds)
    text = table()
    os.makedirs(os.path.dirname(TABLE), exist_ok=True)
    with open(TABLE, "w", encoding="utf-8") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
