"""Detectron2 launcher of the MoCo detection protocol (docs/detection.md §1.5) - the paper's exact setup.

    ssmix-convert runs/mocov2/backbone.pth runs/mocov2/d2.pkl      # python -m detection.convert in a checkout
    python -m detection.train_net --config-file detection/configs/pascal_voc_R_50_C4_24k_moco.yaml \\
        --num-gpus 8 MODEL.WEIGHTS runs/mocov2/d2.pkl

It registers ``Res5ROIHeadsExtraNorm`` (the res5 RoI head with one more norm layer after the last block),
evaluates ``*coco*`` datasets with COCOEvaluator and ``*voc*`` ones with PascalVOCDetectionEvaluator, and
otherwise relies on DefaultTrainer (precise BN, checkpoints, final evaluation). ``MODEL.WEIGHTS`` may also
name an encoder file or run directory, which is converted to ``OUTPUT_DIR/<name>.pkl`` before launching.
``--config-file`` may be a bare file name from ``detection/configs``. Datasets are read from
``$DETECTRON2_DATASETS`` (default ``./datasets``). detectron2 is imported lazily: it is not on PyPI.

VOC-format sets (``voc_<year or tag>_<split>`` in ``DATASETS.TRAIN`` / ``DATASETS.TEST``, read from
``VOC<year or tag>/``) are (re-)registered with ssmix's reader, so the image file is the XML's
``<filename>`` (any extension, checked before training) and ``--classes A,B,...`` (default: the 20 VOC
classes) names the classes; ``MODEL.ROI_HEADS.NUM_CLASSES`` is set to their count.

    python -m detection.train_net --config-file pascal_voc_R_50_C4_24k_moco.yaml --classes Tree \\
        DATASETS.TRAIN "('voc_trees_trainval',)" DATASETS.TEST "('voc_trees_test',)" MODEL.WEIGHTS d2.pkl
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ssmix.cli import command_parser
from ssmix.config import ConfigError
from ssmix.shipped import DETECTRON2

CONFIG_DIR = str(DETECTRON2.directory())  # detection/configs, or its copy inside an installed ssmix
WEIGHTS_PLACEHOLDER = "SET-MODEL.WEIGHTS-TO-THE-CONVERTED.pkl"
EXTRA_NORM_HEAD = "Res5ROIHeadsExtraNorm"
INSTALL_HINT = (
    "detectron2 is not installed; it is not on PyPI and must be built from source against the installed torch:\n"
    "    git clone https://github.com/facebookresearch/detectron2.git\n"
    "    pip install --no-build-isolation ./detectron2\n"
    "(a few minutes; needs a C++ compiler, and the CUDA toolkit for GPU ops). Without it, use the embedded "
    "backend: ssmix-detect voc_r50_c4_24k model.weights=... (python -m detection.train in a checkout)"
)


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


def voc_dataset_dicts(dirname: str, split: str, classes: Sequence[str], bbox_mode: int = 0) -> List[Dict]:
    """A VOC-format split as detectron2 dataset dicts, read by :func:`ssmix.detection.datasets.read_voc`
    (image from ``<filename>``, boxes 0-based ``XYXY_ABS`` = mode 0, ``image_id`` the file id that
    PascalVOCDetectionEvaluator matches against ``ImageSets/Main/<split>.txt``)."""
    from ssmix.detection.datasets import read_voc

    records = read_voc(dirname, split, classes)
    with open(os.path.join(dirname, "ImageSets", "Main", f"{split}.txt"), encoding="utf-8") as f:
        file_ids = [line.strip() for line in f if line.strip()]
    return [
        {
            "file_name": r.file_name,
            "image_id": file_id,
            "height": r.height,
            "width": r.width,
            "annotations": [
                {"category_id": int(label), "bbox": [float(v) for v in box], "bbox_mode": bbox_mode}
                for box, label in zip(r.boxes, r.labels)
            ],
        }
        for r, file_id in zip(records, file_ids)
    ]


def register_voc_sets(names: Sequence[str], root: str, classes: Sequence[str]) -> List[str]:
    """(Re-)register every VOC-format name among ``names`` with ``classes``; returns the names registered.
    Images and class names are checked here, in the launching process, before any training."""
    import_detectron2()
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode

    from ssmix.detection.datasets import resolve

    done = []
    for name in dict.fromkeys(names):
        if not re.match(r"^voc_\w+?_(train|val|trainval|test)$", name):
            continue
        info = resolve(name, root)
        voc_dataset_dicts(info.annotations, info.split, classes)  # fail now, with a one-line error
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(
            name,
            lambda d=info.annotations, s=info.split: voc_dataset_dicts(d, s, classes, int(BoxMode.XYXY_ABS)),
        )
        # PascalVOCDetectionEvaluator accepts the years 2007 (11-point AP) and 2012 (area AP) only.
        year = 2007 if info.year == 2007 else 2012
        MetadataCatalog.get(name).set(
            thing_classes=list(classes),
            dirname=info.annotations,
            year=year,
            split=info.split,
            evaluator_type="pascal_voc",
        )
        done.append(name)
    return done


def matched_tensors(model_shapes: Mapping[str, Tuple[int, ...]], checkpoint: Mapping[str, object]) -> int:
    """How many checkpoint tensors have a model parameter of the same shape whose name is theirs or ends
    in ``.<theirs>`` (detectron2's matching heuristics, e.g. ``res5.*`` -> ``roi_heads.res5.*``)."""
    count = 0
    for key, value in checkpoint.items():
        shape = tuple(getattr(value, "shape", ()))
        if any(
            (name == key or name.endswith("." + key)) and tuple(s) == shape
            for name, s in model_shapes.items()
        ):
            count += 1
    return count


def log_loaded_encoder(model, weights: str) -> Optional[str]:
    """Log how many tensors of the encoder ``.pkl`` reached ``model``: detectron2's 'not found in the
    checkpoint' warning for the new detection heads is expected and not a failure."""
    if not weights.endswith(".pkl") or not os.path.isfile(weights):
        return None
    from ssmix.safe_load import safe_pickle_load

    loaded = safe_pickle_load(weights, "MODEL.WEIGHTS")  # containers and arrays only: no code runs
    tensors = loaded.get("model", {}) if isinstance(loaded, dict) else {}
    model = getattr(model, "module", model)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    message = (
        f"encoder: loaded {matched_tensors(shapes, tensors)} of {len(tensors)} tensors from {weights}; "
        "parameters reported as 'not found in the checkpoint' are the new detection heads (expected)"
    )
    logging.getLogger("detection").warning(message)
    print(message, flush=True)
    return message


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
            raise ValueError(
                f"no evaluator for dataset '{dataset_name}': the name must contain 'coco' or 'voc'"
            )

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
    from ssmix.detection.convert import convert
    from ssmix.detection.weights import WeightsError

    output_dir = _opt(opts, "OUTPUT_DIR") or "./output"
    name = os.path.basename(os.path.normpath(weights)).split(".")[0] or "encoder"
    target = os.path.join(output_dir, f"{name}.pkl")
    try:
        arch, count = convert(weights, target, overwrite=True)  # derived from MODEL.WEIGHTS on every start
    except WeightsError:
        return opts  # not an encoder: e.g. a detectron2 model_final.pth, which detectron2 reads itself
    print(f"converted {weights} ({arch}, {count} tensors) -> {target}")
    out = list(opts)
    out[out.index("MODEL.WEIGHTS") + 1] = target
    return out


def build_config(args):
    """The detectron2 config of ``args`` with the VOC-format sets registered (see module docstring)."""
    from detectron2.config import get_cfg

    from ssmix.detection.synthetic import VOC_CLASSES

    cfg = get_cfg()
    cfg.merge_from_file(resolve_config_file(args.config_file))
    cfg.merge_from_list(args.opts)
    given = getattr(args, "classes", None)
    classes = [c.strip() for c in given.split(",") if c.strip()] if given else list(VOC_CLASSES)
    root = os.environ.get("DETECTRON2_DATASETS", "datasets")
    if register_voc_sets(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST), root, classes):
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(classes)
        cfg.MODEL.RETINANET.NUM_CLASSES = len(classes)
    return cfg


def setup(args):
    from detectron2.engine import default_setup

    cfg = build_config(args)
    if cfg.MODEL.WEIGHTS == WEIGHTS_PLACEHOLDER and not args.resume:
        raise ValueError(
            "MODEL.WEIGHTS is not set: add 'MODEL.WEIGHTS path/to/encoder.pkl' (from "
            "python -m detection.convert) after the other arguments"
        )
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
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return trainer.test(cfg, model)
    runner = trainer(cfg)
    runner.resume_or_load(resume=args.resume)
    if not args.resume:
        log_loaded_encoder(runner.model, cfg.MODEL.WEIGHTS)
    return runner.train()


USAGE = (
    "%(prog)s --config-file FILE [--num-gpus N] [--classes A,B,...] [--resume] [--eval-only]\n"
    "       [--num-machines N --machine-rank R --dist-url URL] [KEY VALUE ...]"
)


def _standard_arguments(parser: argparse.ArgumentParser) -> None:
    """The launcher flags of Detectron2's default_argument_parser, for --help where it is not installed."""
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to config file")
    parser.add_argument("--resume", action="store_true", help="resume from the checkpoint in OUTPUT_DIR")
    parser.add_argument("--eval-only", action="store_true", help="perform evaluation only")
    parser.add_argument("--num-gpus", type=int, default=1, help="number of gpus *per machine*")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0, help="the rank of this machine")
    parser.add_argument(
        "--dist-url",
        default="tcp://127.0.0.1:49152",
        help="initialization URL for pytorch distributed backend",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        metavar="KEY VALUE",
        help="Detectron2 config overrides, e.g. MODEL.WEIGHTS d2.pkl SOLVER.MAX_ITER 100",
    )


def build_parser() -> argparse.ArgumentParser:
    """Detectron2's own launcher parser where it is installed (its flags stay authoritative), else the same
    flags, so --help works either way; both in the usage / description style of every ssmix command."""
    try:
        from detectron2.engine import default_argument_parser
    except ImportError:
        parser = command_parser("python -m ssmix.detection.train_net", __doc__, USAGE)
        _standard_arguments(parser)
    else:
        parser = default_argument_parser()
        plain_parser = command_parser("python -m ssmix.detection.train_net", __doc__, USAGE)
        parser.prog, parser.usage = plain_parser.prog, plain_parser.usage
        parser.description, parser.formatter_class = plain_parser.description, plain_parser.formatter_class
        parser.epilog = None
    parser.add_argument(
        "--classes",
        default=None,
        metavar="A,B,...",
        help="comma-separated class names of the VOC-format sets (default: the 20 VOC classes)",
    )
    return parser


def cli(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import_detectron2()
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from detectron2.engine import launch

    try:
        build_config(args)  # registers and checks the VOC-format sets: bad data fails here, in one line
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.config_file = resolve_config_file(args.config_file)
    if not args.eval_only:
        args.opts = prepare_weights(list(args.opts))
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli())
