"""Mixed-sample grids: what a config's mixer makes of fixed image pairs over a sweep of lambda.

    python -m ssmix.visualize_mix CONFIG [checkpoint=PATH] [out=grid.png] [pairs=6] [steps=11] [split=NAME]
                                  [dotted.key=value ...]

Rows are image pairs (a = sample i, b = its partner j; both through the eval transform, the pairs a
function of ``seed``), columns are a, b, then the mixer's output at ``steps`` requested lambdas from 0
to 1 (lambda = weight of source a). Everything else on the command line is a config override.

How a lambda is forced (no mixer code changes): every mixer draws its lambda by calling
``sample_lambda`` as imported into its own module; :func:`forced_lambda` temporarily rebinds that name,
in the module of every class of the mixer's MRO, to a function returning the requested value. Other
random choices (box centre, FMix noise, ResizeMix scale) come from torch's global generator, reseeded
with ``seed`` before every column, so a box grows around the same centre as lambda falls. Box mixers
(CutMix, SaliencyMix, ResizeMix, FMix, Inter-Intra) clip or quantise their boxes: their effective
lambda differs from the requested one, and the column label is the requested lambda.

- ManifoldMix mixes hidden maps at a random layer; the grid shows its pixel-space mix (layers forced
  to ``[0]``) and says so.
- Inter-Intra and SAMix-C read labels: the ODC pseudo-labels of a loaded run when the pairs come from
  the split it trained on, otherwise the dataset labels (-1 = unknown where the split has none).
- SAMix-I/C: the model is built from the config and ``checkpoint=`` (a checkpoint file, or a run
  directory: its newest ``checkpoints/step_*.pt``) is loaded; without one the Mixer is untrained.
  The Mixer reads the target trunk's stage-3 maps (``method.target_trunk()``, eval mode, the trunk
  that feeds it in training). A second figure, ``<out stem>_masks.png``, shows per pair the mixed
  images, the mask of source a actually used (grey = weight of a, after the docs/algorithm.md §3.6
  post-processing) and the raw Mixer output s_a. SAMix-P gets the same figure from its own Mixer.

The sweep runs in eval mode under ``torch.no_grad()`` inside ``torch.random.fork_rng``: it changes
neither the model nor the RNG streams, so the trainer can call :func:`training_grid` mid-run without
breaking exact resume.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ssmix.cli import EXPECTED, run_main
from ssmix.config import Config, ConfigError, load_config
from ssmix.mixers import base as mixer_base
from ssmix.mixers.base import MixContext, Mixer

MIN_CELL = 64  # cells are upscaled (nearest) to at least this many pixels per side
PAD = 2  # pixels between cells
LINE_H = 14  # height of one line of text (PIL's default font)
TITLE_LINES = 3  # fixed title block, so the figure size depends only on the grid
BACKGROUND = torch.tensor([0.80, 0.84, 0.93])  # padding and blank cells (no grey mask has this colour)
OPTIONS = {"checkpoint": None, "out": "grid.png", "pairs": 6, "steps": 11, "split": None}


# ------------------------------------------------------------------------------------------ lambda


@contextlib.contextmanager
def forced_lambda(mixer: Mixer, lam: float) -> Iterator[None]:
    """Make every ``sample_lambda(...)`` call of ``mixer`` return ``lam`` inside the block.

    Mixers call ``sample_lambda`` through the name bound in their module; this rebinds that name in
    the module of each class of the mixer's MRO (where it is ``ssmix.mixers.base.sample_lambda``) and
    restores it on exit."""
    patched: List[Tuple[object, object]] = []

    def fixed(alpha: float, device: object = "cpu") -> float:
        return float(lam)

    try:
        for cls in type(mixer).__mro__:
            module = sys.modules.get(cls.__module__)
            if module is not None and getattr(module, "sample_lambda", None) is mixer_base.sample_lambda:
                patched.append((module, module.sample_lambda))
                module.sample_lambda = fixed
        if not patched:
            raise TypeError(f"{type(mixer).__name__}: found no module-level sample_lambda to force")
        yield
    finally:
        for module, original in patched:
            module.sample_lambda = original


# ------------------------------------------------------------------------------------------- pairs


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
        return order[:pairs], order[pairs:2 * pairs]
    a = order[torch.arange(pairs) % num_items]
    return a, order[(torch.arange(pairs) + 1) % num_items]


def load_pairs(cfg: Config, split: str, pairs: int, device: torch.device | str = "cpu") -> Pairs:
    """Build the ``split`` dataset of ``cfg.data`` and read ``pairs`` pairs through the eval transform."""
    from ssmix.data.datasets import build_dataset, data_info
    from ssmix.data.transforms import build_eval_transform

    dc = cfg.data
    info = data_info(dc)
    dataset = build_dataset(dc.name, dc.root, split, download=dc.download, image_size=dc.image_size,
                            num_samples=dc.num_samples, num_classes=info.num_classes, seed=cfg.seed)
    transform = build_eval_transform(dc.image_size, info.mean, info.std)
    index_a, index_b = choose_pairs(len(dataset), pairs, cfg.seed)

    def read(index: Tensor) -> Tuple[Tensor, Tensor]:
        items = [dataset[int(i)] for i in index]
        images = torch.stack([transform(image) for image, _ in items]).to(device)
        return images, torch.tensor([int(label) for _, label in items], device=device)

    (xa, la), (xb, lb) = read(index_a), read(index_b)
    return Pairs(xa, xb, la, lb, index_a.to(device), index_b.to(device))


# ------------------------------------------------------------------------------------------- sweep


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
        note = (f"ManifoldMix: pixel-space mix only (layers forced to [0]; training mixes the online "
                f"trunk's maps at a position drawn from {list(mixer.cfg.layers)})")
        return build_mixer(dataclasses.replace(mixer.cfg, layers=[0])), note
    return mixer, ""


def _sweep_labels(model: nn.Module, mixer: Mixer, pairs: Pairs, from_training_split: bool
                  ) -> Tuple[Optional[Tensor], str]:
    """Labels of the 2P-row batch [a; b] and a note saying which: ODC pseudo-labels of a trained run on
    its own split, else the dataset labels; SAMix-C labels outside its cluster head become -1 (unknown)."""
    if not mixer.needs_labels:
        return None, ""
    odc = getattr(model.pipeline, "odc", None)
    index = torch.cat([pairs.index_a, pairs.index_b])
    if odc is not None and bool(odc.initialized) and from_training_split and int(index.max()) < odc.labels.shape[0]:
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


def lambda_sweep(model: nn.Module, pairs: Pairs, lams: Sequence[float], seed: int = 0,
                 from_training_split: bool = True) -> Sweep:
    """Run ``model.pipeline.mixer`` on every pair at every lambda in ``lams``.

    The batch is [a; b] (2P rows) with the partner permutation pairing row i with row P + i (and back),
    so every mixer sees its usual contract (``xb = views[view_b][perm]``, ``labels[perm]`` and
    ``feature_maps[view_b][perm]`` are the partners'); rows 0..P-1 are kept. Eval mode, no gradient, the
    RNG state and the model's mode are restored on exit."""
    if getattr(model, "pipeline", None) is None:
        raise ConfigError("mix.type is 'none': there is no mixer to visualise; set mix.type (e.g. mix.type=cutmix)")
    method = model.method
    mixer, note = _display_mixer(model.pipeline.mixer)
    p = pairs.xa.shape[0]
    device = pairs.xa.device
    batch = torch.cat([pairs.xa, pairs.xb])
    perm = torch.cat([torch.arange(p, 2 * p), torch.arange(p)]).to(device)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
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
            ctx = MixContext(
                views=[batch, batch], view_a=0, view_b=1, perm=perm,
                keys=torch.zeros(2, 2 * p, method.embed_dim, device=device), negatives=None,
                temperature=method.temperature, embed_target=method.embed_target,
                online_prefix=method.online_prefix, feature_maps=feature_maps,
                labels=labels, num_classes=0,
                index=torch.cat([pairs.index_a, pairs.index_b]),
            )
            net = getattr(mixer, "net", None)
            net_maps = _mixer_maps(mixer, batch, feature_maps) if net is not None else None
            mixed, masks, raw = [], [], []
            for lam in lams:
                torch.manual_seed(seed)  # same geometry in every column
                with forced_lambda(mixer, lam):
                    res = mixer(batch, batch[perm], ctx)
                if res.start != 0:
                    raise RuntimeError(f"{type(mixer).__name__} mixed at trunk position {res.start}, not pixels")
                mixed.append(res.x[:p].float())
                if res.mask is not None:
                    masks.append(res.mask[:p].float().expand(p, 1, *batch.shape[-2:]))
                if net_maps is not None:
                    lam_rows = torch.full((2 * p,), float(lam), device=device)
                    raw.append(net(net_maps, net_maps[perm], lam_rows, batch.shape[-2:])[:p].float())
    finally:
        model.train(was_training)
    return Sweep(
        lams=[float(v) for v in lams], xa=pairs.xa.float(), xb=pairs.xb.float(), mixed=torch.stack(mixed),
        masks=torch.stack(masks) if len(masks) == len(mixed) else None,
        raw_masks=torch.stack(raw) if raw else None, note=note,
    )


# ------------------------------------------------------------------------------------------ grids


def denormalise(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo the eval transform's normalisation; clamped to [0, 1]."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * s + m).clamp(0.0, 1.0)


def grid_cells(sweep: Sweep, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(P, 2 + S, 3, H, W) cells in [0, 1]: column 0 = a, 1 = b, 2 + k = mixed at ``sweep.lams[k]``."""
    mixed = sweep.mixed.transpose(0, 1)  # (P, S, 3, H, W)
    cells = torch.cat([sweep.xa[:, None], sweep.xb[:, None], mixed], dim=1)
    return denormalise(cells, mean, std).cpu()


def mask_cells(sweep: Sweep, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(3P, 2 + S, 3, H, W): per pair a row of :func:`grid_cells`, a row of used masks and a row of raw
    Mixer masks (grey = weight of a); the a/b columns of the mask rows are blank (ones; the figure
    paints them in the background colour)."""
    if sweep.masks is None or sweep.raw_masks is None:
        raise ValueError("mask_cells: this sweep has no learned-Mixer masks (SAMix only)")
    images = grid_cells(sweep, mean, std)
    p, cols = images.shape[:2]
    blank = torch.ones(p, 2, *images.shape[2:])

    def row(masks: Tensor) -> Tensor:
        grey = masks.transpose(0, 1).clamp(0, 1).expand(-1, -1, 3, -1, -1).cpu()
        return torch.cat([blank, grey], dim=1)

    return torch.stack([images, row(sweep.masks), row(sweep.raw_masks)], dim=1).reshape(3 * p, cols, *images.shape[2:])


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, width: int, max_lines: int) -> List[str]:
    """Greedy word wrap to ``width`` pixels, at most ``max_lines`` lines (the last one cut with '...')."""
    font, lines, line = _font(), [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and draw.textlength(last + "...", font=font) > width:
            last = last[:-1]
        lines[-1] = last + "..."
    return lines


def figure_size(rows: int, cols: int, image_size: int) -> Tuple[int, int]:
    """(width, height) in pixels of a figure of ``rows x cols`` cells of an ``image_size`` image."""
    cell = image_size * max(1, math.ceil(MIN_CELL / image_size))
    return cols * (cell + PAD) + PAD, rows * (cell + PAD) + PAD + (TITLE_LINES + 1) * LINE_H


def render(cells: Tensor, col_labels: Sequence[str], title: str,
           cell_text: Optional[Dict[Tuple[int, int], str]] = None) -> Image.Image:
    """A PIL figure: ``title`` (wrapped, at most TITLE_LINES lines), one label per column, then the
    (R, C, 3, H, W) ``cells`` in [0, 1] upscaled to >= MIN_CELL px. Cells named in ``cell_text`` are
    blank (background colour) and hold that text. Padding and blanks use BACKGROUND, a colour no grey
    mask takes, so a white (all-a) mask stays visible."""
    from torchvision.utils import make_grid

    rows, cols, _, h, w = cells.shape
    zoom = max(1, math.ceil(MIN_CELL / h))
    cell_text = cell_text or {}
    cells = cells.clone()
    for r, c in cell_text:
        cells[r, c] = BACKGROUND.view(3, 1, 1)
    flat = cells.reshape(rows * cols, *cells.shape[2:])
    if zoom > 1:
        flat = torch.nn.functional.interpolate(flat, scale_factor=zoom, mode="nearest")
    grid = make_grid(flat + 1.0, nrow=cols, padding=PAD, pad_value=0.0)  # cells in [1, 2], padding 0
    padding = (grid == 0).all(0)
    grid = grid - 1.0
    grid[:, padding] = BACKGROUND[:, None]
    grid_img = Image.fromarray(grid.mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy())
    top = (TITLE_LINES + 1) * LINE_H
    figure = Image.new("RGB", (grid_img.width, grid_img.height + top), "white")
    figure.paste(grid_img, (0, top))
    draw, font = ImageDraw.Draw(figure), _font()
    for i, line in enumerate(_wrap(draw, title, figure.width - 2 * PAD, TITLE_LINES)):
        draw.text((PAD, i * LINE_H + 1), line, fill="black", font=font)
    cell_w, cell_h = w * zoom + PAD, h * zoom + PAD
    for c, label in enumerate(col_labels):
        x = PAD + c * cell_w + (w * zoom - draw.textlength(label, font=font)) / 2
        draw.text((x, TITLE_LINES * LINE_H + 1), label, fill="black", font=font)
    for (r, c), text in cell_text.items():
        draw.text((PAD + c * cell_w + 3, top + PAD + r * cell_h + 3), text, fill="black", font=font)
    return figure


def column_labels(lams: Sequence[float]) -> List[str]:
    return ["a", "b"] + [f"{lam:.2f}" for lam in lams]


def _title(cfg: Config, sweep: Sweep, what: str) -> str:
    parts = [f"{cfg.method.name} + {cfg.mix.type}: {what}", "columns: requested lambda (weight of a)"]
    if cfg.mix.type not in ("mixup", "manifoldmix"):
        parts.append("box/mask mixers clip and adjust, so the effective lambda may differ")
    if sweep.note:
        parts.append(sweep.note)
    return "; ".join(parts)


def mix_figure(cfg: Config, sweep: Sweep) -> Image.Image:
    """The main grid: rows = pairs, columns = a, b, mixed at each lambda."""
    from ssmix.data.datasets import data_info

    info = data_info(cfg.data)
    return render(grid_cells(sweep, info.mean, info.std), column_labels(sweep.lams),
                  _title(cfg, sweep, "rows = pairs (a, b)"))


def mask_figure(cfg: Config, sweep: Sweep) -> Image.Image:
    """The learned Mixer's masks: per pair, mixed images / used mask of a / raw Mixer mask s_a."""
    from ssmix.data.datasets import data_info

    info = data_info(cfg.data)
    cells = mask_cells(sweep, info.mean, info.std)
    text = {}
    for r in range(0, cells.shape[0], 3):
        text.update({(r + 1, 0): "used", (r + 1, 1): "mask", (r + 2, 0): "Mixer", (r + 2, 1): "raw s_a"})
    return render(cells, column_labels(sweep.lams),
                  _title(cfg, sweep, "per pair: mixed; mask of a used (grey = weight of a, post-processed); "
                                     "raw Mixer output s_a"), text)


def training_grid(cfg: Config, model: nn.Module, device: torch.device | str, pairs: int = 4,
                  steps: int = 5) -> Tensor:
    """A small figure for TensorBoard, (3, H, W) in [0, 1]: ``pairs`` pairs of the training split
    (eval transform) at ``steps`` lambdas; the mask figure for learned Mixers. RNG and model untouched."""
    import torchvision.transforms.functional as TF

    data = load_pairs(cfg, cfg.data.split, pairs, device)
    sweep = lambda_sweep(model, data, sweep_lambdas(steps), cfg.seed, from_training_split=True)
    figure = mask_figure(cfg, sweep) if sweep.learned else mix_figure(cfg, sweep)
    return TF.to_tensor(figure)


# -------------------------------------------------------------------------------------------- CLI


def masks_path(out: str) -> str:
    stem, ext = os.path.splitext(out)
    return f"{stem}_masks{ext or '.png'}"


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file, or a run directory -> its newest ``checkpoints/step_*.pt``."""
    from ssmix.engine.checkpoint import latest_checkpoint

    if os.path.isdir(path):
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"checkpoint={path}: a directory without checkpoints/step_*.pt; "
                                    "pass a run's output_dir or a checkpoint file")
        return found
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint={path}: no such file or directory")
    return path


def build_model(cfg: Config, checkpoint: Optional[str], device: str) -> nn.Module:
    """Pretrainer(cfg) with ``checkpoint`` loaded. The ODC memory (labels=odc) is sized from the
    checkpoint; without one it stays uninitialised (the sweep then uses dataset labels) and gets a
    nominal size that satisfies its cluster-size checks."""
    from ssmix.data.datasets import data_info
    from ssmix.engine.checkpoint import CheckpointError, load_checkpoint
    from ssmix.engine.pretrainer import Pretrainer

    state = None
    odc = getattr(cfg.mix, "odc", None)
    num_samples = max(odc.num_clusters * max(odc.min_cluster, 1), 2) if odc is not None else 2
    if checkpoint:
        path = resolve_checkpoint(checkpoint)
        loaded = load_checkpoint(path, "checkpoint")
        if not isinstance(loaded, dict) or not isinstance(loaded.get("model"), dict):
            raise CheckpointError(f"checkpoint={checkpoint}: {path} is not an ssmix training checkpoint (no 'model'); "
                                  "pass a checkpoints/step_*.pt file or a run's output_dir")
        state = loaded["model"]
        odc_labels = state.get("pipeline.odc.labels")
        if odc_labels is not None:
            num_samples = int(odc_labels.shape[0])
    num_classes = data_info(cfg.data).num_classes
    model = Pretrainer(cfg, num_samples, num_classes)
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0:3]
            raise ConfigError(f"checkpoint={checkpoint} does not fit the model this config builds ({' '.join(first)}); "
                              "use the run's own config: python -m ssmix.visualize_mix RUN/config.yaml "
                              "checkpoint=RUN") from None
    return model.to(device)


def parse_args(argv: Sequence[str]) -> Tuple[str, Dict[str, object], List[str]]:
    """CONFIG, this tool's options (``OPTIONS``) and the remaining config overrides."""
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if argv else 2)
    config, options, overrides = argv[0], dict(OPTIONS), []
    for item in argv[1:]:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"'{item}': expected key=value (e.g. pairs=4 or mix.type=cutmix)")
        if key in ("pairs", "steps"):
            try:
                options[key] = int(value)
            except ValueError:
                raise ConfigError(f"{key}={value}: expected an integer") from None
        elif key in OPTIONS:
            options[key] = value or None
        else:
            overrides.append(item)
    return config, options, overrides


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_main(lambda: _run(argv), EXPECTED + (ValueError,))


def _run(argv: List[str]) -> int:
    from ssmix.engine.trainer import resolve_device

    config, opts, overrides = parse_args(argv)
    cfg = load_config(config, overrides)
    device = resolve_device(cfg.device)
    split = opts["split"] or cfg.data.split
    pairs = load_pairs(cfg, split, int(opts["pairs"]), device)
    lams = sweep_lambdas(int(opts["steps"]))
    model = build_model(cfg, opts["checkpoint"], device)
    sweep = lambda_sweep(model, pairs, lams, cfg.seed, from_training_split=split == cfg.data.split)
    out = str(opts["out"])
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    mix_figure(cfg, sweep).save(out)
    print(f"{cfg.method.name} + {cfg.mix.type}, split {split}, pairs (a, b) = "
          f"{list(zip(pairs.index_a.tolist(), pairs.index_b.tolist()))}, lambdas {[round(v, 3) for v in lams]}")
    if sweep.note:
        print(sweep.note)
    if not opts["checkpoint"] and sweep.learned and cfg.mix.type != "samix_p":
        print("note: no checkpoint= given: the Mixer and encoder are untrained")
    print(f"wrote {out}")
    if sweep.learned:
        mask_figure(cfg, sweep).save(masks_path(out))
        print(f"wrote {masks_path(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
