"""Each config key's one-line meaning, read from the schema's own comments (``ssmix/config.py`` and the
method / mixer schemas), for ``ssmix-pretrain NAME --print-config`` (YAML with comments) and the key
reference ``docs/config.md``.

Regenerate the reference with ``python -m ssmix.config_doc > docs/config.md``; tests/test_researcher.py
fails when it is stale. A field's meaning is its inline ``# comment``, else the comment lines right above
it; keys the schema leaves uncommented get theirs from :data:`MEANINGS`.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from typing import Any, Dict, Iterator, List, Optional, Tuple

import yaml

from ssmix.config import METHOD_SCHEMAS, MIX_SCHEMAS, Config, type_name

_FIELD = re.compile(r"^\s{4}(\w+)\s*:\s*[^=#]+?(?:=\s*(.*?))?\s*(?:#\s*(.*))?$")
_COMMENT = re.compile(r"^\s{4}#\s?(.*)$")

#: meanings of keys whose schema line carries no comment (dotted path from the top-level section)
MEANINGS = {
    "data": "the images pre-trained on, and their views",
    "data.aug": "view augmentation",
    "data.mean": "per-channel normalisation mean (null = the dataset's own)",
    "data.std": "per-channel normalisation std (null = the dataset's own)",
    "data.aug.multi_crop.sizes": "side of each crop size, in pixels",
    "data.aug.multi_crop.counts": "crops of each size (the first must be 2)",
    "data.aug.multi_crop.min_scales": "smallest crop area of each size",
    "data.aug.multi_crop.max_scales": "largest crop area of each size",
    "model": "the encoder",
    "train": "schedule, optimizer, logging, checkpoints, monitors",
    "mix.odc": "online deep clustering pseudo-labels (docs/algorithm.md §5)",
    "output_dir": "where everything goes; default runs/<data.name>/<config name>",
    "seed": "seed of the data order, augmentations and initialisation",
    "deterministic": "deterministic torch algorithms (warn-only) and no cudnn.benchmark",
    "data.download": "use torchvision's downloaders where they exist",
    "data.num_workers": "DataLoader worker processes",
    "data.aug.min_scale": "smallest crop area of the random resized crop",
    "data.aug.cj_prob": "probability of colour jitter",
    "data.aug.gray_prob": "probability of grey-scale",
    "data.aug.hflip_prob": "probability of a horizontal flip",
    "data.aug.rotation_degrees": "the rotation's largest angle (see rotation_prob)",
    "data.aug.multi_crop": "SwAV multi-crop: counts[i] crops of side sizes[i] with scale in [min, max]",
    "model.zero_init_residual": "zero-initialise the last BatchNorm of each residual block",
    "train.epochs": "length of the schedule (warm-up + cosine follow it)",
    "train.batch_size": "images per process and step (global batch: x world size)",
    "train.lr": "peak learning rate of the encoder",
    "train.momentum": "SGD / LARS momentum",
    "train.weight_decay": "weight decay of the encoder's weights",
    "train.warmup_epochs": "linear warm-up length in epochs",
    "train.grad_clip": "clip the gradients' global norm to this (null = off)",
    "train.keep_ckpts": "checkpoints kept (older ones of this run are deleted)",
    "train.progress": "show the progress bar",
    "method.name": "the SSL method: mocov2 | simclr | byol | swav | simsiam",
    "mix.type": "the mixer: none | mixup | cutmix | resizemix | fmix | saliencymix | manifoldmix | interintra | "
    "samix_i | samix_c | samix_p",
    "mix.weight": "scale of the mixed-view loss",
    "method.out_dim": "width of the projector's output (the embedding)",
    "method.temperature": "softmax temperature of the method's loss",
    "method.momentum": "EMA momentum of the momentum (target) encoder",
    "method.queue_size": "negatives kept in the key queue",
    "mix.odc.num_clusters": "ODC pseudo-label clusters C (docs/algorithm.md §5)",
    "mix.odc.kmeans_iters": "Lloyd iterations of the initial k-means",
    "mix.mask_loss_margin": "margin of the mask loss's mean term (docs/algorithm.md §3.7)",
    "mix.mixer_lr": "learning rate of the Mixer's own SGD group (docs/algorithm.md §6.2, §11)",
    "mix.mixer_momentum": "SGD momentum of the Mixer's group",
    "mix.mixer_weight_decay": "weight decay of the Mixer's group",
    "mix.mixer_warmup_epochs": "linear lr warm-up of the Mixer's group, in epochs",
    "mix.mixer_min_lr": "final learning rate of the Mixer's group (cosine)",
    "mix.head_lr": "learning rate of the SAMix-C cluster head",
    "mix.head_momentum": "SGD momentum of the cluster head",
    "mix.head_weight_decay": "weight decay of the cluster head",
    "data.image_size": "side of the square training crops, in pixels",
    "mix.cross_view": "true: mix view 1 of i with view 2 of pi(i) (docs/algorithm.md §2.3); false: view 1 of both",
}


def field_meanings(cls: type) -> Dict[str, str]:
    """``{field: meaning}`` from the comments in the source of ``cls`` and of its dataclass bases."""
    out: Dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            out.update(_class_comments(klass))
    return out


def _class_comments(cls: type) -> Dict[str, str]:
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):  # pragma: no cover - no source (frozen install)
        return {}
    out: Dict[str, str] = {}
    above: List[str] = []
    last: Optional[str] = None
    for line in lines[1:]:
        comment, field = _COMMENT.match(line), _FIELD.match(line)
        if comment:
            text = comment.group(1).strip()
            if text.startswith("|") and last:  # an inline list of values continued on the next line
                out[last] = f"{out[last]} {text}"
            elif not text[:1].isupper():  # "# Mixer losses (...)" heads a group of fields: not a meaning
                above.append(text)
        elif field and not line.strip().startswith(('"', "'")):
            name, inline = field.group(1), field.group(3)
            meaning = inline or " ".join(above)
            if meaning:
                out[name] = meaning.strip()
            last, above = (name if inline else None), []
        else:
            above, last = [], None
    return out


def _walk(obj: Any, prefix: str = "") -> Iterator[Tuple[str, dataclasses.Field, Any, Dict[str, str]]]:
    """``(dotted key, field, value, meanings of its class)`` for every field of ``obj``, depth first."""
    meanings = field_meanings(type(obj))
    for f in dataclasses.fields(obj):
        yield f"{prefix}{f.name}", f, getattr(obj, f.name), meanings


def meaning_of(key: str, meanings: Dict[str, str]) -> str:
    return MEANINGS.get(key) or meanings.get(key.rsplit(".", 1)[-1], "")


def unused_reason(key: str, cfg: Config) -> str:
    """Why ``key`` does nothing with this config ("" when it applies)."""
    if key == "data.num_samples" and cfg.data.name != "synthetic":
        return "unused: data.name is not synthetic"
    if key == "data.aug.multi_crop" and cfg.data.aug.kind != "swav":
        return "unused: data.aug.kind is not swav"
    if key == "data.split" and cfg.data.name == "folder":
        return "unused: a folder has no splits (every image under data.root)"
    if key == "data.eval_root" and cfg.data.name != "folder":
        return "unused: data.name is not folder"
    return ""


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


def commented_yaml(cfg: Config) -> str:
    """``cfg`` as YAML with each key's meaning as a comment; keys that do nothing here are marked.
    Loading it gives ``cfg`` back (tests/test_researcher.py)."""
    out: List[str] = []
    _emit(cfg, "", 0, cfg, out)
    return "\n".join(out) + "\n"


def _emit(obj: Any, prefix: str, depth: int, cfg: Config, out: List[str]) -> None:
    pad = "  " * depth
    for key, f, value, meanings in _walk(obj, prefix):
        note = "; ".join(t for t in (unused_reason(key, cfg), meaning_of(key, meanings)) if t)
        comment = f"  # {note}" if note else ""
        if dataclasses.is_dataclass(value):
            out.append(f"{pad}{f.name}:{comment}")
            _emit(value, f"{key}.", depth + 1, cfg, out)
        else:
            out.append(f"{pad}{f.name}: {_scalar(value)}{comment}")


# ------------------------------------------------------------------------------------------ docs/config.md


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(value):
            return "(section)"
    else:
        return "(required)"
    return f"`{_scalar(value)}`"


def _rows(cls: type, prefix: str) -> Iterator[str]:
    hints = typing.get_type_hints(cls)
    meanings = field_meanings(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if prefix == "" and f.name in ("method", "mix"):
            yield f"| `{key}` | section | | {meaning_of(key, meanings)} (keys: below, per {f.name}) |"
            continue
        if dataclasses.is_dataclass(tp):
            yield f"| `{key}` | section | | {meaning_of(key, meanings)} |"
            yield from _rows(tp, f"{key}.")
            continue
        meaning = meaning_of(key, meanings).replace("|", "\\|")
        yield f"| `{key}` | {type_name(tp)} | {_default(f)} | {meaning} |"


def _table(cls: type, prefix: str) -> List[str]:
    return ["| key | type | default | meaning |", "|---|---|---|---|", *_rows(cls, prefix)]


def config_reference() -> str:
    """The Markdown of ``docs/config.md``: every key of the pre-training schema, with type, default, meaning."""
    import ssmix.methods  # noqa: F401  (fill the registries)
    import ssmix.mixers  # noqa: F401

    lines = [
        "# Pre-training config keys",
        "",
        "Generated from the schema's comments by `python -m ssmix.config_doc > docs/config.md` "
        "(tests/test_researcher.py fails when this file is stale). `ssmix-pretrain NAME --print-config` "
        "prints a resolved config with the same meanings as comments.",
        "",
        "## Common keys",
        "",
        *_table(Config, ""),
        "",
    ]
    for title, section, registry, tag in (
        ("method", "method", METHOD_SCHEMAS, "name"),
        ("mix", "mix", MIX_SCHEMAS, "type"),
    ):
        for name in sorted(registry):
            lines += [f"## `{section}.{tag}: {name}`", "", *_table(registry[name], f"{section}."), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_reference(), end="")
