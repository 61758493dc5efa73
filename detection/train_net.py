"""Detectron2 launcher of the MoCo detection protocol (detection_notes.md 1.5) - the paper's exact setup.

    python -m detection.convert runs/mocov2/backbone.pth runs/mocov2/d2.pkl
    python -m detection.train_net --config-file detection/configs/pascal_voc_R_50_C4_24k_moco.yaml \\
        --num-gpus 8 MODEL.WEIGHTS runs/mocov2/d2.pkl

It registers ``Res5ROIHeadsExtraNorm`` (the res5 RoI head with one more norm layer after the last block),
evaluates ``*coco*`` datasets with COCOEvaluator and ``*voc*`` ones with PascalVOCDetectionEvaluator, and
otherwise relies on DefaultTrainer (precise BN, checkpoints, final evaluation). ``MODEL.WEIGHTS`` may also
name an encoder file or run directory, which is converted to ``OUTPUT_DIR/<name>.pkl`` before launching.
``--config-file`` may be a bare file name from ``detection/configs``. Datasets are read from
``$DETECTRON2_DATASETS`` (default ``./datasets``). detectron2 is imported lazily: it is not on PyPI.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional, Sequence

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
WEIGHTS_PLACEHOLDER = "SET-MODEL.WEIGHTS-TO-THE-CONVERTED.pkl"
EXTRA_NORM_HEAD = "Res5ROIHeadsExtraNorm"
INSTALL_HINT = (
    "detectron2 is not installed; it is not on PyPI and must be built from source against the installed torch:\n"
    "    git clone https://github.com/facebookresearch/detectron2.git\n"
    "    pip install --no-build-isolation ./detectron2\n"
    "(a few minutes; needs a C++ compiler, and the CUDA toolkit for GPU ops). Without it, use the embedded "
    "backend: python -m detection.train detection/presets/voc_r50_c4_24k.yaml model.weights=...")


def import_detectron2():
    """The detectron2 module, or an ImportError telling how to install it."""
    try:
        import detectron2
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return detectron2


def register_extra_norm_head():
    """Register (once) and return ``Res5ROIHeadsExtraNorm``: Res5ROIHeads whose ``res5`` Sequential ends
    with ``norm`` = get_norm(MODEL.RESNETS.NORM, channels of the last block), MoCo's extra BN. Box and mask
    features both pass through it; it starts at gamma=1, beta=0 (no pre-trained weights)."""
    import_detectron2()
    from detectron2.layers import get_norm
    from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads

    try:
        return ROI_HEADS_REGISTRY.get(EXTRA_NORM_HEAD)
    except KeyError:
        pass

    class Res5ROIHeadsExtraNorm(Res5ROIHeads):
        def __init__(self, cfg, input_shape):
            super().__init__(cfg, input_shape)
            self.res5.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, self.res5[-1].out_channels))

    ROI_HEADS_REGISTRY.register(Res5ROIHeadsExtraNorm)
    return Res5ROIHeadsExtraNorm


def trainer_class():
    """DefaultTrainer whose evaluator depends on the dataset name (COCO vs VOC)."""
    import_detectron2()
    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator

    class Trainer(DefaultTrainer):
        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            if "coco" in dataset_name:
                folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
                return COCOEvaluator(dataset_name, output_dir=folder)
            if "voc" in dataset_name:
                return PascalVOCDetectionEvaluator(dataset_name)
            raise ValueError(f"no evaluator for dataset '{dataset_name}': the name must contain 'coco' or 'voc'")

    return Trainer


def resolve_config_file(path: str) -> str:
    if os.path.isfile(path):
        return path
    bundled = os.path.join(CONFIG_DIR, path)
    if os.path.isfile(bundled):
        return bundled
    choices = ", ".join(sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml")))
    raise FileNotFoundError(f"--config-file '{path}' not found (bundled configs: {choices})")


def _opt(opts: Sequence[str], key: str) -> Optional[str]:
    pairs = dict(zip(opts[0::2], opts[1::2]))
    return pairs.get(key)


def prepare_weights(opts: List[str]) -> List[str]:
    """If MODEL.WEIGHTS names an encoder (not a .pkl, not a detectron2 checkpoint), convert it to
    ``OUTPUT_DIR/<name>.pkl`` and point MODEL.WEIGHTS there."""
    weights = _opt(opts, "MODEL.WEIGHTS")
    if not weights or weights.endswith(".pkl") or not os.path.exists(weights):
        return opts
    from detection.convert import convert
    from detection.weights import WeightsError

    output_dir = _opt(opts, "OUTPUT_DIR") or "./output"
    name = os.path.basename(os.path.normpath(weights)).split(".")[0] or "encoder"
    target = os.path.join(output_dir, f"{name}.pkl")
    try:
        arch, count = convert(weights, target)
    except WeightsError:
        return opts  # not an encoder: e.g. a detectron2 model_final.pth, which detectron2 reads itself
    print(f"converted {weights} ({arch}, {count} tensors) -> {target}")
    out = list(opts)
    out[out.index("MODEL.WEIGHTS") + 1] = target
    return out


def setup(args):
    from detectron2.config import get_cfg
    from detectron2.engine import default_setup

    cfg = get_cfg()
    cfg.merge_from_file(resolve_config_file(args.config_file))
    cfg.merge_from_list(args.opts)
    if cfg.MODEL.WEIGHTS == WEIGHTS_PLACEHOLDER and not args.resume:
        raise ValueError("MODEL.WEIGHTS is not set: add 'MODEL.WEIGHTS path/to/encoder.pkl' (from "
                         "python -m detection.convert) after the other arguments")
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    """One process (per GPU): register the head, build the config, train or evaluate."""
    register_extra_norm_head()
    from detectron2.checkpoint import DetectionCheckpointer

    cfg = setup(args)
    trainer = trainer_class()
    if args.eval_only:
        model = trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return trainer.test(cfg, model)
    runner = trainer(cfg)
    runner.resume_or_load(resume=args.resume)
    return runner.train()


def cli(argv: Optional[Sequence[str]] = None) -> int:
    try:
        import_detectron2()
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from detectron2.engine import default_argument_parser, launch

    args = default_argument_parser().parse_args(argv)
    args.config_file = resolve_config_file(args.config_file)
    if not args.eval_only:
        args.opts = prepare_weights(list(args.opts))
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
