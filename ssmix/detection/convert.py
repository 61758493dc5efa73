"""Convert an ssmix / torchvision / MoCo encoder to a Detectron2 ``.pkl`` (docs/detection.md §1.6).

torchvision ResNet names become detectron2's: ``conv1``/``bn1`` -> ``stem.conv1``/``stem.conv1.norm``,
``layer1..4`` -> ``res2..5``, ``bnK`` -> ``convK.norm``, ``downsample.0/1`` -> ``shortcut``/``shortcut.norm``.
The pickle holds ``{"model": name -> ndarray, "__author__": "ssmix", "matching_heuristics": True}``:
``__author__`` keeps detectron2 from applying Caffe2 renames, and the heuristics map ``res5.*`` onto the
C4 RoI head and ``res2..4`` onto ``backbone.*``, so one file serves C4 and FPN models.

CLI: ``ssmix-convert INPUT OUTPUT.pkl`` (``python -m ssmix.detection.convert``; ``python -m detection.convert``
in a checkout), then ``MODEL.WEIGHTS OUTPUT.pkl`` for Detectron2.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from torch import Tensor

from ssmix.cli import EXPECTED, command_parser, run_main

AUTHOR = "ssmix"
_RULES: List[Tuple[re.Pattern, Callable[[re.Match], str]]] = [
    (re.compile(r"^conv1\.weight$"), lambda m: "stem.conv1.weight"),
    (re.compile(r"^bn1\.(\w+)$"), lambda m: f"stem.conv1.norm.{m[1]}"),
    (
        re.compile(r"^layer([1-4])\.(\d+)\.conv([1-3])\.weight$"),
        lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.weight",
    ),
    (
        re.compile(r"^layer([1-4])\.(\d+)\.bn([1-3])\.(\w+)$"),
        lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}",
    ),
    (
        re.compile(r"^layer([1-4])\.(\d+)\.downsample\.0\.weight$"),
        lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.weight",
    ),
    (
        re.compile(r"^layer([1-4])\.(\d+)\.downsample\.1\.(\w+)$"),
        lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}",
    ),
]


def detectron2_name(key: str) -> Optional[str]:
    """The detectron2 ResNet name of a torchvision ResNet key, or None if it is not a trunk key."""
    for pattern, rename in _RULES:
        match = pattern.match(key)
        if match:
            return rename(match)
    return None


def to_detectron2(state_dict: Mapping[str, Tensor]) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """Renamed numpy arrays, plus the source keys that have no detectron2 name (expected: none)."""
    model: Dict[str, np.ndarray] = {}
    unmapped: List[str] = []
    for key, value in state_dict.items():
        name = detectron2_name(key)
        if name is None:
            unmapped.append(key)
        else:
            model[name] = value.detach().cpu().numpy()
    return model, unmapped


def write_detectron2_pkl(state_dict: Mapping[str, Tensor], output: str) -> Dict[str, np.ndarray]:
    """Write the detectron2 checkpoint; raises if a key cannot be mapped or ``output`` is not ``.pkl``."""
    if not output.endswith(".pkl"):
        raise ValueError(f"output '{output}': detectron2 reads converted weights only from a .pkl file")
    model, unmapped = to_detectron2(state_dict)
    if unmapped:
        raise ValueError(f"cannot map {len(unmapped)} key(s) to detectron2 names: {unmapped[:10]}")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = f"{output}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            pickle.dump({"model": model, "__author__": AUTHOR, "matching_heuristics": True}, f)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return model


def convert(source: str, output: str, trust_pickle: bool = False, overwrite: bool = False) -> Tuple[str, int]:
    """Convert any encoder file :func:`ssmix.detection.weights.load_encoder_state` accepts; returns (arch, #tensors).
    ``trust_pickle`` also reads files that pickle objects (runs their code: only for files you made); an
    existing ``output`` is replaced only with ``overwrite``."""
    from ssmix.detection.weights import load_encoder_state

    if os.path.exists(output) and not overwrite:
        raise ValueError(f"output '{output}' exists; pass --overwrite to replace it, or another path")

    state, arch, cifar_stem = load_encoder_state(source, trust_pickle, "--trust-pickle")
    if cifar_stem:
        raise ValueError(
            f"{source}: a CIFAR-stem encoder (3x3 conv1, no max-pool) cannot be used for detection"
        )
    return arch, len(write_detectron2_pkl(state, output))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = command_parser("ssmix-convert", __doc__, "%(prog)s INPUT OUTPUT.pkl [--trust-pickle]")
    parser.add_argument(
        "input", help="backbone.pth, ssmix run directory, or a training/torchvision/MoCo checkpoint"
    )
    parser.add_argument("output", help="output path, must end in .pkl")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="also read an input that pickles objects; this runs code from the file, so use it "
        "only for files you made yourself (default: tensors and containers only)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT.pkl")
    args = parser.parse_args(argv)

    def body() -> int:
        arch, count = convert(args.input, args.output, args.trust_pickle, args.overwrite)
        print(f"wrote {args.output}: {arch}, {count} tensors (use MODEL.WEIGHTS {args.output})")
        return 0

    return run_main(body, EXPECTED + (ValueError,))


if __name__ == "__main__":
    sys.exit(main())
