"""Typed configuration: YAML files with ``_base_`` inheritance, ``dotted.key=value`` overrides and a
dataclass schema that rejects unknown keys and wrong types before any model is built.

The ``method`` and ``mix`` sections are polymorphic: their schema is the dataclass registered for
``method.name`` / ``mix.type`` (see :func:`register_method_config` and :func:`register_mix_config`).
The packages that own them fill those registries when imported (``import ssmix.methods, ssmix.mixers``;
every entry point does); this module imports neither.

The generic pieces (:func:`from_dict`, :func:`merge`, :func:`read_yaml`, :func:`parse_overrides`, the
range checks) also load the other schemas (linear evaluation, detection).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

import yaml

from ssmix.errors import ConfigError
from ssmix.shipped import PRETRAIN, Shelf

# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------


@dataclass
class MultiCropConfig:
    """SwAV multi-crop: ``counts[i]`` crops of side ``sizes[i]`` with scale in [min, max]."""

    sizes: List[int] = field(default_factory=lambda: [96, 48])
    counts: List[int] = field(default_factory=lambda: [2, 6])
    min_scales: List[float] = field(default_factory=lambda: [0.14, 0.05])
    max_scales: List[float] = field(default_factory=lambda: [1.0, 0.14])


@dataclass
class AugConfig:
    """View augmentation. ``kind`` picks the paper recipe (lightly transforms)."""

    kind: str = "mocov2"  # mocov2 | simclr | byol | simsiam | swav
    min_scale: float = 0.2
    cj_prob: float = 0.8
    cj_strength: float = 1.0  # scales the recipe's colour-jitter strengths
    gray_prob: float = 0.2
    blur_prob: float = 0.5  # set 0 for 32 px (CIFAR), as MoCo-colab / SimSiam do
    hflip_prob: float = 0.5
    # random rotation by an angle uniform in [-rotation_degrees, rotation_degrees], with this probability
    rotation_prob: float = 0.0
    rotation_degrees: float = 0.0
    multi_crop: MultiCropConfig = field(default_factory=MultiCropConfig)


@dataclass
class DataConfig:
    # synthetic | digits | fashion_mnist | mnist | cifar10 | cifar100 | stl10 | tiny_imagenet | imagefolder | folder
    name: str = "synthetic"
    root: str = "data"  # folder: the directory of your images (any sub-folder layout)
    split: str = "train"  # pre-training split (stl10: unlabeled | train | test | train+unlabeled)
    image_size: int = 32
    num_samples: int = 512  # synthetic only
    subset: int = 0  # > 0: pre-train on a fixed class-balanced subset of this many images of the split
    # null = the dataset's own value (ssmix.data.datasets.DATASET_INFO); mean / std: R, G, B on 0..1
    num_classes: Optional[int] = None
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    eval_root: Optional[str] = None  # folder: labelled <eval_root>/{train,val}/<class>/* for train.knn_every
    download: bool = False
    num_workers: int = 2
    aug: AugConfig = field(default_factory=AugConfig)


@dataclass
class ModelConfig:
    arch: str = "resnet18"  # resnet18 | resnet34 | resnet50
    cifar_stem: bool = False  # 3x3 stride-1 conv1 and no max-pool, for 32 px inputs
    zero_init_residual: bool = False
    channels_last: bool = True  # CUDA only (slower on CPU, see ssmix.device.memory_format_for)
    sync_bn: bool = False  # under DDP: BatchNorm statistics over the global batch (not for MoCo: shuffle-BN)


@dataclass
class TrainConfig:
    epochs: int = 200
    max_steps: Optional[int] = None  # stop early; the schedule still follows `epochs`
    # The batch, one of two keys (the other null): batch_size per process (torchrun: per GPU; the global
    # batch is world size x batch_size) or global_batch_size over all processes (each gets global / world).
    batch_size: Optional[int] = 256  # per process (null when global_batch_size is set)
    global_batch_size: Optional[int] = None  # over all processes, split evenly (null: batch_size per process)
    optimizer: str = "sgd"  # sgd | lars
    lr: float = 0.03
    # null: train.lr as given; N: the linear rule lr = train.lr x global batch / N (SimCLR, BYOL: N = 256)
    lr_reference_batch: Optional[int] = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0  # final lr = lr * min_lr_ratio (cosine)
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off
    grad_clip: Optional[float] = None
    log_every: int = 10  # steps between metrics.jsonl rows
    ckpt_every: int = 500  # steps between checkpoints (one is always written at the end)
    keep_ckpts: int = 2
    knn_every: int = 0  # epochs between online kNN monitors (0 = off)
    knn_k: int = 200  # neighbours of the online kNN monitor (200, MoCo's; 20 for small sets like digits)
    # epochs between mixed-sample grids (TensorBoard and output_dir/figures/*.png; 0 = off)
    vis_every: int = 0
    # linear head on the online trunk's detached features, trained on labelled batches, top-1 logged per epoch:
    # off | auto (on where the split has labels) | on (ssmix/evaluation/online_probe.py)
    online_probe: str = "off"
    # tensorboard | wandb (pip install 'ssmix[wandb]')
    loggers: List[str] = field(default_factory=lambda: ["tensorboard"])
    progress: bool = True


@dataclass
class MethodConfig:
    """Base of every method's schema; ``name`` selects the registered subclass."""

    name: str = "mocov2"


@dataclass
class MixConfig:
    """Base of every mixer's schema; ``type`` selects the registered subclass.

    ``weight`` scales the mixed-view loss; ``cross_view`` selects the pairing (docs/algorithm.md §2.3):
    True mixes view 1 of i with view 2 of pi(i) (targets: the other views), False mixes view 1 of both
    (targets: view 2 of both, the paper's Fig. 8 reading).
    """

    type: str = "none"
    weight: float = 1.0
    cross_view: bool = True


@dataclass
class ODCConfig:
    """Online deep clustering pseudo-labels (docs/algorithm.md §5, defaults of §5.6 / §11)."""

    num_clusters: int = 200
    min_cluster: int = 150  # clusters smaller than this are dissolved and refilled (docs/algorithm.md §5.3)
    centroid_interval: int = 50  # steps between centroid recomputations
    small_cluster_interval: int = 50  # steps between small-cluster handling
    reweight_pow: float = 0.5  # class weight ~ count^-pow (docs/algorithm.md §5.4)
    kmeans_iters: int = 20


@dataclass
class LabelledMixConfig(MixConfig):
    """Base of mixers that need a label per sample (Inter-Intra, SAMix-C).

    ``labels: odc`` clusters the target-branch embeddings online (docs/algorithm.md §5); ``labels: dataset`` uses the
    dataset's labels (for tests and oracle ablations).
    """

    labels: str = "odc"  # odc | dataset
    odc: ODCConfig = field(default_factory=ODCConfig)


def check_alpha(alpha: float, key: str) -> None:
    """A Beta concentration ``key`` must be >= 0 (0 disables mixing: lambda = 1)."""
    if alpha < 0:
        raise ConfigError(f"{key}: Beta concentration must be >= 0 (0 disables mixing), got {alpha}")


@dataclass
class BetaMixConfig(MixConfig):
    """Base of mixers with one ``alpha``: lambda ~ Beta(alpha, alpha), one draw per batch
    (``Mixer.sample_lambda``, docs/algorithm.md §8). ResizeMix's ``use_alpha`` draws its scale from it
    instead. :meth:`validate_alpha` refuses a bad value when the config is made; a subclass with a
    stricter rule overrides it."""

    alpha: float = 2.0  # lambda ~ Beta(alpha, alpha), one per batch (docs/algorithm.md §1)

    def __post_init__(self) -> None:
        self.validate_alpha()

    def validate_alpha(self) -> None:
        """Raise :class:`ConfigError` unless ``alpha >= 0``."""
        check_alpha(self.alpha, "mix.alpha")


@dataclass
class Config:
    output_dir: str = "runs/default"  # with a config file: runs/<data.name>/<config name> unless set
    seed: int = 0
    resume: Optional[str] = None  # None | auto | a checkpoint file | a run directory (its newest checkpoint)
    overwrite: bool = False  # start afresh in a non-empty output_dir, deleting the old run's outputs
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


METHOD_SCHEMAS: Dict[str, Type[MethodConfig]] = {}
MIX_SCHEMAS: Dict[str, Type[MixConfig]] = {"none": MixConfig}
_POLYMORPHIC = {"method": ("name", METHOD_SCHEMAS), "mix": ("type", MIX_SCHEMAS)}


def registrar(table: Dict[str, type]):
    """``register = registrar(table)``; ``@register("name")`` puts the decorated class in ``table``."""

    def register(name: str):
        def wrap(cls):
            table[name] = cls
            return cls

        return wrap

    return register


register_method_config = registrar(METHOD_SCHEMAS)  # the schema of ``method.name``
register_mix_config = registrar(MIX_SCHEMAS)  # the schema of ``mix.type``


# --------------------------------------------------------------------------------------------
# dict -> dataclass with type checking
# --------------------------------------------------------------------------------------------


class _NotFinite(ConfigError):
    """A NaN or infinite number (kept as is through ``Optional``: the type was right, the value not)."""


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother = 80, 80


def _show(value: Any) -> str:
    """A short repr for messages: a huge (alias-expanded) value is never printed whole."""
    return _REPR.repr(value)


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{type_name(args[0])} or null"
    if origin in (list, List, tuple, Tuple):
        return f"list of {type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _closest(key: str, options: Sequence[str], prefix: str = "") -> str:
    match = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    if match:
        return f" (did you mean '{prefix}{match[0]}'?)"
    return f" (valid: {', '.join(sorted(options))})"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if dataclasses.is_dataclass(args[0]) or typing.get_origin(args[0]) in (list, List, tuple, Tuple):
            return _coerce(value, args[0], where)
        try:
            return _coerce(value, args[0], where)
        except _NotFinite:
            raise
        except ConfigError:
            raise ConfigError(
                f"{where}: expected {type_name(tp)}, got {type(value).__name__} {_show(value)}"
            ) from None
    if origin in (list, List, tuple, Tuple):
        (item_tp,) = typing.get_args(tp)[:1]
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected {type_name(tp)}, got {type(value).__name__} {_show(value)}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) and nan as strings
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise _NotFinite(f"{where}: expected a finite number, got {value}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # YAML 1.1 reads off/on/no/yes as booleans (train.amp=off)
            return "on" if value else "off"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise ConfigError(f"{where}: expected {type_name(tp)}, got {type(value).__name__} {_show(value)}")


def from_dict(cls: Type, data: Any, where: str = "") -> Any:
    """A nested dict -> the dataclass ``cls``, types checked; ``where`` is the key path for messages."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where or 'config'}: expected a mapping of keys, got {type(data).__name__} {_show(data)}"
        )
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(
                f"unknown key '{path}'{_closest(str(key), names, f'{where}.' if where else '')}"
            )
        tp = hints[key]
        if key in _POLYMORPHIC and not where and isinstance(value, dict):
            tag, registry = _POLYMORPHIC[key]
            default_tag = getattr(tp(), tag)
            name = value.get(tag, default_tag)
            if name not in registry:
                hint = (
                    _closest(str(name), list(registry))
                    if registry
                    else (
                        f" (nothing is registered: import ssmix.{'methods' if key == 'method' else 'mixers'} first)"
                    )
                )
                raise ConfigError(f"{path}.{tag}: unknown value '{name}'{hint}")
            tp = registry[name]
        kwargs[key] = _coerce(value, tp, path)
    return cls(**kwargs)


def config_to_dict(cfg: Any) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


# --------------------------------------------------------------------------------------------
# YAML loading, inheritance and overrides
# --------------------------------------------------------------------------------------------


def merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    """``over`` merged into ``base`` key by key (nested dicts recursively; a new method/mixer type drops the
    old one's keys)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            # A change of method/mixer type discards the fields of the old one.
            same_kind = not (
                key in _POLYMORPHIC
                and _POLYMORPHIC[key][0] in value
                and value[_POLYMORPHIC[key][0]] != out[key].get(_POLYMORPHIC[key][0])
            )
            out[key] = merge(out[key], value) if same_kind else dict(value)
        else:
            out[key] = value
    return out


class _DuplicateKey(ValueError):
    """A mapping that names one key twice (PyYAML would silently keep the last)."""


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys in a mapping."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: Dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if isinstance(key, typing.Hashable) and key in seen:
                    raise _DuplicateKey(
                        f"line {line}: duplicate key '{str(key)[:80]}' (first at line {seen[key]}); "
                        "YAML keeps only the last one: merge the two into one"
                    )
                if isinstance(key, typing.Hashable):
                    seen[key] = line
        return super().construct_mapping(node, deep)


MAX_CONFIG_NODES = 100_000  # a config has a few hundred values; more is an alias bomb
MAX_CONFIG_DEPTH = 32  # the schema nests 4 deep


def _check_shape(data: Any, where: str) -> None:
    """Refuse trees that expand (through YAML aliases) to more than :data:`MAX_CONFIG_NODES` values, nest
    deeper than :data:`MAX_CONFIG_DEPTH`, or refer to themselves; each shared node is counted once per use
    without being walked again."""
    sizes: Dict[int, int] = {}
    active: set = set()

    def size(node: Any, depth: int) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(
                f"{where}: nested more than {MAX_CONFIG_DEPTH} levels deep; a config nests a few "
                "levels (section.key: value)"
            )
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in active:
            raise ConfigError(f"{where}: a YAML alias refers to itself (a recursive value); remove the alias")
        active.add(id(node))
        children = [c for kv in node.items() for c in kv] if isinstance(node, dict) else node
        total = 1
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_CONFIG_NODES:
                raise ConfigError(
                    f"{where}: expands to more than {MAX_CONFIG_NODES} values (YAML aliases "
                    "repeating each other: an alias bomb?); write the values out"
                )
        active.discard(id(node))
        sizes[id(node)] = total
        return total

    size(data, 0)


def load_yaml_text(text: str, where: str) -> Any:
    """Parse YAML ``text`` strictly (no duplicate keys, bounded size and depth); errors name ``where``."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except RecursionError:
        raise ConfigError(
            f"{where}: nested too deeply to read; a config nests a few levels (section.key: value)"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: invalid YAML: {_short_yaml_error(exc)}") from None
    _check_shape(data, where)
    return data


def _short_yaml_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    text = f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else str(problem)
    return " ".join(text.split())[:300]


def _read_text(path: str) -> str:
    """The file as UTF-8 text; a binary or Latin-1 file is one line naming the byte."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    if b"\x00" in raw:
        raise ConfigError(
            f"{path}: a binary file (it holds NUL bytes), not a YAML config; pass a .yaml text file"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); save the file as UTF-8"
        ) from None


def read_yaml(path: str, _seen: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """Read a YAML config, resolving ``_base_`` (a path or a list, relative to the file)."""
    path = os.path.abspath(path)
    if path in _seen:
        raise ConfigError(f"{path}: circular _base_ chain {' -> '.join(_seen + (path,))}")
    if not os.path.isfile(path):
        if _seen:
            raise ConfigError(
                f"{_seen[-1]}: _base_ file not found: {path}; fix the _base_ path (it is relative "
                "to the file that names it)"
            )
        raise ConfigError(f"config file not found: {path}")
    text = _read_text(path)
    data = load_yaml_text(text, path)
    if data is None:
        raise ConfigError(f"{path}: the file is empty; a config is a mapping of keys (e.g. train.epochs: 10)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_: expected a path or a list of paths, got {_show(bases)}")
    merged: Dict[str, Any] = {}
    for base in bases:
        base_path = os.path.join(os.path.dirname(path), base)
        merged = merge(merged, read_yaml(base_path, _seen + (path,)))
    return merge(merged, data)


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """``["train.lr=0.1", "mix.type=cutmix"]`` -> nested dict, values parsed as YAML scalars."""
    out: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form dotted.key=value")
        key, raw = item.split("=", 1)
        try:
            value = load_yaml_text(raw, f"override '{item[:80]}'") if raw != "" else ""
        except ConfigError as exc:
            if "invalid YAML" in str(exc):
                value = raw
            else:
                raise
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is set twice")
        node[parts[-1]] = value
    return out


def build_config(data: Dict[str, Any]) -> Config:
    """Nested dict -> validated :class:`Config` (types, then ranges). The schemas of ``method.name`` and
    ``mix.type`` must be registered (import ``ssmix.methods`` and ``ssmix.mixers``)."""
    data = dict(data)
    for key in _POLYMORPHIC:  # an absent method/mix section still gets its registered schema
        if data.get(key) is None:
            data[key] = {}
    return validate(from_dict(Config, data, ""))


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device(device: str, key: str = "device") -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if not _DEVICE.match(device):
        raise ConfigError(f"{key}: invalid value '{device}', expected auto, cpu, cuda or cuda:N")


def check_ranges(values: Dict[str, Any], rule: str) -> None:
    """``rule``: ``>0`` (positive), ``>=0`` or ``>=1``; None values are skipped (optional keys)."""
    low, strict = {">0": (0, True), ">=0": (0, False), ">=1": (1, False)}[rule]
    for key, value in values.items():
        if value is not None and (value <= low if strict else value < low):
            kind = "a positive number" if rule == ">0" else f"a number {rule[:2]} {low}"
            raise ConfigError(f"{key}: expected {kind}, got {value}")


def validate(cfg: Config) -> Config:
    """Value ranges the type schema cannot express; raises :class:`ConfigError` naming the key."""
    check_device(cfg.device)
    d, t = cfg.data, cfg.train
    check_ranges(
        {
            "data.image_size": d.image_size,
            "data.num_samples": d.num_samples,
            "data.num_classes": d.num_classes,
            "train.epochs": t.epochs,
            "train.max_steps": t.max_steps,
            "train.batch_size": t.batch_size,
            "train.global_batch_size": t.global_batch_size,
            "train.lr_reference_batch": t.lr_reference_batch,
            "train.lr": t.lr,
            "train.log_every": t.log_every,
            "train.ckpt_every": t.ckpt_every,
            "train.grad_clip": t.grad_clip,
        },
        ">0",
    )
    check_ranges(
        {
            "data.num_workers": d.num_workers,
            "data.subset": d.subset,
            "train.momentum": t.momentum,
            "train.weight_decay": t.weight_decay,
            "train.warmup_epochs": t.warmup_epochs,
            "train.min_lr_ratio": t.min_lr_ratio,
            "train.knn_every": t.knn_every,
            "train.vis_every": t.vis_every,
            "data.aug.rotation_prob": d.aug.rotation_prob,
            "data.aug.rotation_degrees": d.aug.rotation_degrees,
        },
        ">=0",
    )
    check_ranges({"train.keep_ckpts": t.keep_ckpts}, ">=1")
    check_batch_keys(t)
    if not cfg.output_dir:
        raise ConfigError("output_dir: must not be empty")
    from ssmix.config_checks import (  # issue 24: configs that validate but cannot run
        check_config,
        usable_workers,
    )

    check_config(cfg)
    d.num_workers = usable_workers(d.num_workers)
    return cfg


def check_batch_keys(t: TrainConfig) -> None:
    """Exactly one of ``train.batch_size`` (per process) and ``train.global_batch_size`` is set."""
    if t.batch_size is not None and t.global_batch_size is not None:
        raise ConfigError(
            f"train.global_batch_size={t.global_batch_size} and train.batch_size={t.batch_size} "
            "are both set: set train.batch_size=null to give the global batch, or "
            "train.global_batch_size=null to give the batch per process"
        )
    if t.batch_size is None and t.global_batch_size is None:
        raise ConfigError(
            "train.batch_size: null needs train.global_batch_size (the batch over all processes)"
        )


def per_process_batch(t: TrainConfig, world: int) -> int:
    """The batch of each of ``world`` processes: ``train.batch_size`` or ``train.global_batch_size / world``."""
    if t.global_batch_size is None:
        return t.batch_size
    if t.global_batch_size % world:
        raise ConfigError(
            f"train.global_batch_size={t.global_batch_size} does not divide over {world} "
            f"processes: use a multiple of {world}, or a number of processes that divides it"
        )
    return t.global_batch_size // world


def scaled_lr(t: TrainConfig, global_batch: int) -> float:
    """``train.lr``, or with ``train.lr_reference_batch`` the linear rule lr x global batch / reference."""
    return t.lr if t.lr_reference_batch is None else t.lr * global_batch / t.lr_reference_batch


def check_runnable(path: str) -> None:
    """A file under a ``_base_`` folder is a fragment that other configs include, not a run."""
    if "_base_" in os.path.normpath(os.path.abspath(path)).split(os.sep):
        raise ConfigError(
            f"{path}: a _base_ fragment (included by other configs), not a runnable config; "
            "pass a config that includes it, e.g. configs/synthetic/mocov2.yaml"
        )


def read_config(
    path: Optional[str], overrides: Sequence[str], shelf: Shelf
) -> Tuple[Optional[str], Dict[str, Any]]:
    """``path`` (a file, a config shipped on ``shelf`` by name, or None for pure defaults) resolved and
    checked runnable, and its ``_base_``-merged contents with the ``dotted.key=value`` overrides applied."""
    if path:
        path = shelf.resolve(path)
        check_runnable(path)
    data = read_yaml(path) if path else {}
    return path, merge(data, parse_overrides(overrides))


def load_config(path: Optional[str], overrides: Sequence[str] = ()) -> Config:
    """Load ``path`` (a file, a shipped config's name, or None for pure defaults), apply overrides, validate."""
    path, data = read_config(path, overrides, PRETRAIN)
    if path and not data.get("output_dir"):
        data["output_dir"] = default_output_dir(path, data)
    return build_config(data)


def default_output_dir(path: str, data: Dict[str, Any]) -> str:
    """``runs/<data.name>/<config name>``: where a run goes unless its own config or the command line sets
    ``output_dir`` (shipped configs do not), so ``data.name=folder`` lands in ``runs/folder/...``."""
    section = data.get("data")
    name = section.get("name") if isinstance(section, dict) else None
    return os.path.join("runs", str(name or DataConfig.name), os.path.splitext(os.path.basename(path))[0])


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
