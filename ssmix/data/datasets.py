"""Raw dataset readers: every dataset yields ``(PIL.Image in RGB mode, int label)``.

Labels are 0-based; ``-1`` marks an unlabeled image (STL-10 ``unlabeled``). Every dataset also has
``.targets`` (one int per item, no image decoding), supports ``len()``, and pickles cheaply for
DataLoader workers. Readers are our own code on the real on-disk formats (torchvision's STL10/CIFAR
classes are used only to download, because they verify md5 checksums on read).

On-disk layouts (``root`` is ``data.root``):

``stl10`` (96x96; splits ``unlabeled`` | ``train`` | ``test`` | ``train+unlabeled``)::

    <root>/stl10_binary/train_X.bin  train_y.bin  test_X.bin  test_y.bin  unlabeled_X.bin

  ``*_X.bin``: uint8, one image = 3*96*96 bytes, channel planes, each plane column-major (stored
  transposed). ``*_y.bin``: one uint8 label 1..10 per image (read as 0..9). ``unlabeled_X.bin`` is
  2.7 GB and is memory-mapped, never loaded. ``train+unlabeled`` = the 5k train items, then the
  100k unlabeled items (label -1). ``data.download=true`` fetches the archive via torchvision.

``cifar10`` / ``cifar100`` (32x32; splits ``train`` | ``test``)::

    <root>/cifar-10-batches-py/data_batch_1 ... data_batch_5  test_batch
    <root>/cifar-100-python/train  test

  Python pickles of dicts: ``b'data'`` uint8 (N, 3072) = R, G, B planes, each row-major 32x32;
  labels in ``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` (CIFAR-100, 100 classes).
  ``data.download=true`` fetches the archive via torchvision.

``tiny_imagenet`` (64x64 files, pre-trained at 96; splits ``train`` | ``val``)::

    <root>/tiny-imagenet-200/wnids.txt
    <root>/tiny-imagenet-200/train/<wnid>/images/*.JPEG
    <root>/tiny-imagenet-200/val/images/*.JPEG
    <root>/tiny-imagenet-200/val/val_annotations.txt   (tab-separated: file wnid x y w h)

  Class index = position of the wnid in ``sorted(wnids.txt)``. No downloader: get
  http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it into ``<root>``.

``imagefolder`` (ImageNet layout; splits ``train`` | ``val`` | ``test``)::

    <root>/<split>/<class_name>/<image files>

  torchvision ``ImageFolder``'s layout; classes are the sorted sub-folder names of ``train`` (their count is
  the class count), and every split is numbered by that map (a class unknown to ``train`` is refused).

``folder`` (your own unlabeled images; no splits: ``data.split`` is not read, every image is used)::

    <root>/**/<image files>   (any depth of sub-folders; extensions in IMAGE_EXTENSIONS, any case)

  Every image under ``root``, sorted by path, label ``-1`` (sub-folder names are not labels). A file
  that does not decode raises :class:`CorruptImageError` naming it.

``fashion_mnist`` / ``mnist`` (28x28 grey; splits ``train`` | ``val`` | ``trainval`` | ``test``)::

    <root>/train-images-idx3-ubyte[.gz]  train-labels-idx1-ubyte[.gz]
    <root>/t10k-images-idx3-ubyte[.gz]   t10k-labels-idx1-ubyte[.gz]

  The original IDX files, gzipped or not, in ``root`` itself, ``<root>/fashion-mnist`` (``<root>/mnist``)
  or torchvision's ``<root>/FashionMNIST/raw`` (``<root>/MNIST/raw``); where none holds them, Debian's
  ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``; Debian ships no MNIST).
  IDX: a big-endian header (two zero bytes, type 0x08 = uint8, the number of dimensions, then each
  dimension as uint32) and the values. ``trainval`` is the 60k training file, ``val`` a fixed carve-out of it (500 per class, drawn
  by ``_IDX_VAL_SEED``, independent of ``seed``) for tuning, ``train`` the 55k rest, ``test`` the 10k test
  file. ``data.download=true`` fetches the files with torchvision's downloader.

``digits`` (offline, no files): scikit-learn's bundled ``load_digits()`` (1797 real 8x8 images,
values 0..16, 10 classes), scaled to uint8 0..255 and bilinearly resized to ``image_size``, RGB.
Splits ``train`` | ``test`` | ``all``: per class, the indices are shuffled with a fixed generator
(``_DIGITS_SPLIT_SEED``, independent of ``seed``) and the first 20 % go to ``test`` (359 test /
1438 train images), so the two never overlap whatever seed a run uses.

``synthetic`` (offline, no files): ``num_samples`` images of ``image_size`` px, label ``i %
num_classes``. Each class is a fixed two-colour sinusoidal grating (orientation, frequency, colours
drawn from ``_SYNTHETIC_CLASS_SEED`` and the class index only, so every split and seed shares the
same classes); each image draws phase (offset), orientation/frequency jitter, contrast, colour shift
and pixel noise from ``(seed, split, index)``. Items are generated on the fly and are identical across
calls and processes; ``test`` uses a different stream than ``train``.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ssmix.config import ConfigError

__all__ = [
    "CorruptImageError",
    "DatasetFileError",
    "DatasetNotFoundError",
    "DatasetInfo",
    "DATASET_INFO",
    "IMAGE_EXTENSIONS",
    "build_dataset",
    "dataset_info",
]

Item = Tuple[Image.Image, int]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing or unreadable; the message says what is expected where."""


class DatasetFileError(OSError, ValueError):
    """A dataset file that is present but unusable (a corrupt image, a malformed or unsafe batch file)."""


class CorruptImageError(DatasetFileError):
    """An image file that does not decode. Its message is one line naming the file, also when a
    DataLoader worker re-raises it (the worker's traceback is reduced to its last line)."""

    def __init__(self, message: str) -> None:
        lines = [line for line in str(message).strip().splitlines() if line.strip()]
        last = lines[-1] if lines else ""
        prefix = f"{__name__}.{type(self).__name__}: "
        super().__init__(last[len(prefix) :] if last.startswith(prefix) else last)


@dataclass(frozen=True)
class DatasetInfo:
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    image_size: int  # native / pre-training resolution
    num_classes: int
    splits: Tuple[str, ...]


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
DATASET_INFO: Dict[str, DatasetInfo] = {
    # synthetic: measured on 4096 train images at 32 px, seed 0, 10 classes (per-channel, 0..1 scale).
    "synthetic": DatasetInfo((0.5148, 0.4362, 0.4407), (0.1924, 0.2123, 0.1941), 32, 10, ("train", "test")),
    # digits: measured over all 1797 images after scaling to 0..255 and bilinear resize to 32 px:
    # x = np.stack([np.asarray(build_dataset("digits", "", "all")[i][0]) for i in range(1797)]) / 255
    # mean, std = x.mean(), x.std()   (grey, so identical across channels).
    "digits": DatasetInfo((0.3055,) * 3, (0.3235,) * 3, 32, 10, ("train", "test", "all")),
    "cifar10": DatasetInfo((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 32, 10, ("train", "test")),
    "cifar100": DatasetInfo((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 32, 100, ("train", "test")),
    "stl10": DatasetInfo(
        _IMAGENET_MEAN, _IMAGENET_STD, 96, 10, ("unlabeled", "train", "test", "train+unlabeled")
    ),
    "tiny_imagenet": DatasetInfo(_IMAGENET_MEAN, _IMAGENET_STD, 96, 200, ("train", "val")),
    "imagefolder": DatasetInfo(_IMAGENET_MEAN, _IMAGENET_STD, 224, 1000, ("train", "val", "test")),
    "folder": DatasetInfo(_IMAGENET_MEAN, _IMAGENET_STD, 224, 0, ("train",)),  # unlabeled: no classes
    # the published statistics of the 60k training images on the 0..1 scale (grey, equal channels)
    "fashion_mnist": DatasetInfo((0.2860,) * 3, (0.3530,) * 3, 28, 10, ("train", "val", "trainval", "test")),
    "mnist": DatasetInfo((0.1307,) * 3, (0.3081,) * 3, 28, 10, ("train", "val", "trainval", "test")),
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def dataset_info(
    name: str,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    num_classes: Optional[int] = None,
) -> DatasetInfo:
    """``DATASET_INFO[name]`` with the config's ``data.mean`` / ``data.std`` / ``data.num_classes``
    (None keeps the dataset's default); raises ValueError naming the bad key."""
    if name not in DATASET_INFO:
        raise ValueError(f"data.name: unknown dataset '{name}', expected one of {', '.join(DATASET_INFO)}")
    info = DATASET_INFO[name]
    for key, value in (("data.mean", mean), ("data.std", std)):
        if value is not None and (len(value) != 3 or (key == "data.std" and min(value) <= 0)):
            raise ValueError(
                f"{key}: expected 3 per-channel values (R, G, B{', > 0' if key == 'data.std' else ''}) "
                f"on the 0..1 scale, got {list(value)}"
            )
    if num_classes is not None and num_classes < 0:
        raise ValueError(f"data.num_classes: expected an integer >= 0, got {num_classes}")
    return DatasetInfo(
        tuple(mean) if mean is not None else info.mean,
        tuple(std) if std is not None else info.std,
        info.image_size,
        info.num_classes if num_classes is None else num_classes,
        info.splits,
    )


def dataset_info_from_config(data) -> DatasetInfo:
    """:func:`dataset_info` of a ``DataConfig`` (``ssmix.config``); a bad value raises ``ConfigError``."""
    from ssmix.config import ConfigError

    try:
        info = dataset_info(data.name, data.mean, data.std, data.num_classes)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return info


def _check_index(index: int, length: int) -> int:
    index = int(index)
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError(f"index {index} out of range for a dataset of {length} items")
    return index


def _not_found(
    name: str, root: str, missing: Sequence[str], layout: Sequence[str], hint: str
) -> DatasetNotFoundError:
    lines = (
        [
            f"dataset {name!r} not found under root {root!r}; missing: {', '.join(missing)}.",
            "Expected layout:",
        ]
        + [f"  {os.path.join(root, entry)}" for entry in layout]
        + [hint]
    )
    return DatasetNotFoundError("\n".join(lines))


def _require(name: str, root: str, layout: Sequence[str], hint: str) -> None:
    missing = [os.path.join(root, entry) for entry in layout if not os.path.exists(os.path.join(root, entry))]
    if missing:
        raise _not_found(name, root, missing, layout, hint)


def _download_hint(name: str) -> str:
    return f"Set data.download=true to fetch {name} (needs internet), or place the files there yourself."


# --------------------------------------------------------------------------------------------- STL-10
_STL_DIR = "stl10_binary"
_STL_SIDE = 96
_STL_IMAGE_BYTES = 3 * _STL_SIDE * _STL_SIDE
_STL_FILES = {
    "train": ("train_X.bin", "train_y.bin"),
    "test": ("test_X.bin", "test_y.bin"),
    "unlabeled": ("unlabeled_X.bin", None),
}


class STL10Binary(Dataset):
    """STL-10 binary files, memory-mapped and decoded per item; parts are concatenated in order."""

    def __init__(self, parts: Sequence[Tuple[str, Optional[str]]]):
        self.x_paths = [x for x, _ in parts]
        targets, self.offsets = [], [0]
        for x_path, y_path in parts:
            size = os.path.getsize(x_path)
            if size % _STL_IMAGE_BYTES:
                raise DatasetFileError(
                    f"{x_path}: {size} bytes is not a whole number of 3x96x96 uint8 images "
                    f"({_STL_IMAGE_BYTES} bytes each); the file is truncated or not STL-10"
                )
            count = size // _STL_IMAGE_BYTES
            if y_path is None:
                labels = np.full(count, -1, dtype=np.int64)
            else:
                labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64) - 1
                if len(labels) != count or (count and not (labels.min() >= 0 and labels.max() <= 9)):
                    raise DatasetFileError(
                        f"{y_path}: expected {count} uint8 labels in 1..10 to match {x_path}, "
                        f"got {len(labels)} values"
                    )
            targets.append(labels)
            self.offsets.append(self.offsets[-1] + count)
        self.targets = np.concatenate(targets) if targets else np.zeros(0, dtype=np.int64)
        self._maps: Dict[int, np.memmap] = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = {}  # never pickle mapped pages; each worker re-opens its own view
        return state

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> Item:
        index = _check_index(index, len(self))
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        if part not in self._maps:
            self._maps[part] = np.memmap(self.x_paths[part], dtype=np.uint8, mode="r").reshape(
                -1, 3, _STL_SIDE, _STL_SIDE
            )
        planes = self._maps[part][index - self.offsets[part]]  # (3, W, H): planes stored column-major
        image = np.ascontiguousarray(planes.transpose(2, 1, 0))  # -> (H, W, 3)
        return Image.fromarray(image), int(self.targets[index])


def _build_stl10(root: str, split: str, download: bool) -> Dataset:
    names = ["train", "unlabeled"] if split == "train+unlabeled" else [split]
    layout = [os.path.join(_STL_DIR, f) for n in names for f in _STL_FILES[n] if f is not None]
    if download and not all(os.path.exists(os.path.join(root, entry)) for entry in layout):
        import torchvision

        _download(
            "stl10", root, layout, lambda: torchvision.datasets.STL10(root, split="train", download=True)
        )
    _require("stl10", root, layout, _download_hint("stl10"))
    return STL10Binary(
        [tuple(None if f is None else os.path.join(root, _STL_DIR, f) for f in _STL_FILES[n]) for n in names]
    )


def _download(name: str, root: str, layout: Sequence[str], fetch: Callable[[], object]) -> None:
    try:
        fetch()
    except Exception as error:  # network / archive errors: say where to put the files instead
        raise _not_found(
            name,
            root,
            [f"download failed ({type(error).__name__}: {error})"],
            layout,
            "Place the files there by hand.",
        ) from error


# --------------------------------------------------------------------------------------------- CIFAR
_CIFAR = {  # name -> (folder, train files, test files, label key)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}


# What a CIFAR batch file pickles: dicts, lists, bytes and numpy arrays. Nothing else is rebuilt, so a
# planted file cannot run code.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _CIFAR_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name}")


def _read_cifar_batch(path: str) -> object:
    try:
        with open(path, "rb") as f:
            return _CifarUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise DatasetFileError(
            f"{path}: not a CIFAR batch file ({error}); a CIFAR batch holds only arrays, "
            "lists and bytes - re-download the dataset"
        ) from None


class ArrayImages(Dataset):
    """In-memory uint8 images, RGB (N, H, W, 3) or grey (N, H, W), with int labels, served as RGB
    (CIFAR: 150 MB at most; Fashion-MNIST 47 MB)."""

    def __init__(self, images: np.ndarray, targets: np.ndarray):
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Item:
        index = _check_index(index, len(self))
        image = Image.fromarray(self.images[index])
        return image if image.mode == "RGB" else image.convert("RGB"), int(self.targets[index])


def _build_cifar(name: str, root: str, split: str, download: bool) -> Dataset:
    folder, train_files, test_files, label_key = _CIFAR[name]
    files = train_files if split == "train" else test_files
    layout = [os.path.join(folder, f) for f in files]
    if download and not all(os.path.exists(os.path.join(root, entry)) for entry in layout):
        import torchvision

        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        _download(name, root, layout, lambda: cls(root, train=True, download=True))
    _require(name, root, layout, _download_hint(name))
    images, targets = [], []
    for entry in layout:
        path = os.path.join(root, entry)
        batch = _read_cifar_batch(path)
        if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
            raise DatasetFileError(f"{path}: expected a pickled dict with keys b'data' and {label_key!r}")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise DatasetFileError(f"{path}: b'data' must be uint8 of shape (N, 3072), got {data.shape}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        targets.append(np.asarray(batch[label_key], dtype=np.int64))
    return ArrayImages(np.ascontiguousarray(np.concatenate(images)), np.concatenate(targets))


# ------------------------------------------------------------------------------------ Tiny-ImageNet
_TINY_DIR = "tiny-imagenet-200"


_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # 16/32-bit integer and float pixels


def _to_rgb(image: Image.Image) -> Image.Image:
    """``image`` in RGB mode. 16-bit and float images are scaled to 8 bit first (``convert("RGB")`` would
    clip them: a 16-bit PNG turns almost white, a float TIFF black); values it cannot place are refused."""
    if image.mode not in _DEEP_MODES:
        return image.convert("RGB")
    pixels = np.asarray(image, dtype=np.float64)
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if image.mode == "F":
        scale = 255.0 if low >= 0 and high <= 1 else 1.0 if low >= 0 and high <= 255 else None
    else:
        scale = 255.0 / 65535.0 if low >= 0 and high <= 65535 else None
    if scale is None or not np.isfinite(pixels).all():
        raise ValueError(
            f"{image.mode} pixels in [{low:g}, {high:g}] have no 8-bit reading (expected 0..1 or "
            "0..255 floats, or 0..65535 integers); convert the file to 8-bit"
        )
    return Image.fromarray(np.round(pixels * scale).clip(0, 255).astype(np.uint8)).convert("RGB")


def _load_rgb(path: str) -> Image.Image:
    try:
        with open(path, "rb") as f:
            return _to_rgb(Image.open(f))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise CorruptImageError(
            f"{path}: not a readable image ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}); delete or replace the file"
        ) from None


class ImageFiles(Dataset):
    """A list of image files with int labels, decoded per item."""

    def __init__(self, paths: List[str], targets: List[int]):
        self.paths, self.targets = paths, targets

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Item:
        index = _check_index(index, len(self))
        return _load_rgb(self.paths[index]), int(self.targets[index])


def _build_tiny_imagenet(root: str, split: str) -> Dataset:
    hint = (
        "No downloader: get http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it into the root "
        f"so that {os.path.join(root, _TINY_DIR)} exists."
    )
    base = os.path.join(root, _TINY_DIR)
    layout = [
        os.path.join(_TINY_DIR, "wnids.txt"),
        os.path.join(_TINY_DIR, "train", "<wnid>", "images", "*.JPEG"),
        os.path.join(_TINY_DIR, "val", "images", "*.JPEG"),
        os.path.join(_TINY_DIR, "val", "val_annotations.txt"),
    ]
    needed = (
        [layout[0], os.path.join(_TINY_DIR, "train")]
        if split == "train"
        else [layout[0], os.path.join(_TINY_DIR, "val", "images"), layout[3]]
    )
    missing = [os.path.join(root, n) for n in needed if not os.path.exists(os.path.join(root, n))]
    if missing:
        raise _not_found("tiny_imagenet", root, missing, layout, hint)
    with open(os.path.join(base, "wnids.txt")) as f:
        wnids = sorted(line.strip() for line in f if line.strip())
    class_of = {wnid: i for i, wnid in enumerate(wnids)}
    paths, targets = [], []
    if split == "train":
        for wnid in wnids:
            folder = os.path.join(base, "train", wnid, "images")
            if not os.path.isdir(folder):
                raise _not_found("tiny_imagenet", root, [folder], layout, hint)
            files = sorted(f for f in os.listdir(folder) if f.lower().endswith((".jpeg", ".jpg", ".png")))
            paths += [os.path.join(folder, f) for f in files]
            targets += [class_of[wnid]] * len(files)
    else:
        annotations = os.path.join(base, "val", "val_annotations.txt")
        with open(annotations) as f:
            rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
        for row_number, row in enumerate(rows, 1):
            if len(row) < 2 or row[1] not in class_of:
                raise DatasetFileError(
                    f"{annotations}:{row_number}: expected 'file<TAB>wnid<TAB>x<TAB>y<TAB>w<TAB>h' "
                    f"with a wnid from wnids.txt, got {row!r}"
                )
        for file_name, wnid, *_ in sorted(rows):
            paths.append(os.path.join(base, "val", "images", file_name))
            targets.append(class_of[wnid])
    return ImageFiles(paths, targets)


def _train_class_map(root: str, split: str) -> Optional[Dict[str, int]]:
    """The class numbering of ``<root>/train`` for another split (None for ``train`` itself, or when there is
    no ``train``): each split numbered on its own would give one index to two classes. A class folder of
    ``split`` unknown to ``train`` is refused (issue 24)."""
    from torchvision.datasets.folder import find_classes

    train, folder = os.path.join(root, "train"), os.path.join(root, split)
    if split == "train" or not os.path.isdir(train) or not os.path.isdir(folder):
        return None
    classes, class_to_idx = find_classes(train)
    unknown = sorted(e.name for e in os.scandir(folder) if e.is_dir() and e.name not in class_to_idx)
    if unknown:
        raise DatasetFileError(
            f"{folder}: class folder(s) {', '.join(unknown[:5])} are not in {train} "
            f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}); their labels would "
            "mean nothing: add them to train/ or remove them"
        )
    return class_to_idx


class LabelledFolder(Dataset):
    """``<folder>/<class>/<image>`` (torchvision ``ImageFolder``'s layout and file rules), numbered by
    ``class_map`` (the ``train`` split's) when given, else by the sorted class folders of ``folder``."""

    def __init__(self, folder: str, class_map: Optional[Dict[str, int]]) -> None:
        from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

        if class_map is None:
            self.classes, self.class_to_idx = find_classes(folder)
        else:
            self.classes, self.class_to_idx = sorted(class_map, key=class_map.get), dict(class_map)
        self.samples = make_dataset(
            folder, self.class_to_idx, IMG_EXTENSIONS, allow_empty=class_map is not None
        )
        if not self.samples:
            raise FileNotFoundError(f"no image files in the class folders of {folder}")
        self.targets = [target for _, target in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Item:
        path, target = self.samples[_check_index(index, len(self))]
        return _load_rgb(path), int(target)


def _build_imagefolder(root: str, split: str) -> Dataset:
    folder = os.path.join(root, split)
    try:
        return LabelledFolder(folder, _train_class_map(root, split))
    except FileNotFoundError as error:  # missing folder, or no class folders / no images in it
        raise _not_found(
            "imagefolder",
            root,
            [f"{folder} ({error})"],
            [os.path.join(split, "<class_name>", "<image files>")],
            "Point data.root at a folder holding train/ and val/ (ImageNet layout).",
        ) from error


def _walk_images(root: str) -> List[str]:
    """Image files under ``root`` (symlinks followed), sorted; a folder or file reached twice through
    links (a symlink loop, two links to one folder) counts once, by its real path."""
    seen_dirs, seen_files, paths = set(), set(), []
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_dirs:
            dirs[:] = []
            continue
        seen_dirs.add(real)
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.realpath(path) not in seen_files:
                seen_files.add(os.path.realpath(path))
                paths.append(path)
    return sorted(paths)


def _build_folder(root: str) -> Dataset:
    if not os.path.isdir(root):
        raise _not_found(
            "folder",
            root,
            [root],
            ["**/<image files>"],
            "Point data.root at the folder holding your images (sub-folders are searched).",
        )
    paths = _walk_images(root)
    if not paths:
        raise _not_found(
            "folder",
            root,
            [f"image files ({', '.join(IMAGE_EXTENSIONS)}, any case)"],
            ["**/<image files>"],
            "Point data.root at the folder holding your images.",
        )
    return ImageFiles(paths, [-1] * len(paths))


# ------------------------------------------------------------------------------- Fashion-MNIST / MNIST
_IDX_FILES = {
    "trainval": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: name -> (sub-folders searched under root, Debian's folder, Debian's package or None, torchvision class)
_IDX_SETS = {
    "fashion_mnist": (
        ("", "fashion-mnist", os.path.join("FashionMNIST", "raw")),
        "/usr/share/datasets/fashion-mnist",
        "dataset-fashion-mnist",
        "FashionMNIST",
    ),
    "mnist": (("", "mnist", os.path.join("MNIST", "raw")), "/usr/share/datasets/mnist", None, "MNIST"),
}
_IDX_VAL_SEED = 0  # fixed: the validation carve-out never depends on a run's seed
_IDX_VAL_PER_CLASS = 500


def read_idx(path: str) -> np.ndarray:
    """An IDX file (gzipped when its name ends in ``.gz``) as a uint8 array of its stored shape."""
    import gzip

    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as error:
        raise DatasetFileError(f"{path}: unreadable ({error}); re-download the file") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise DatasetFileError(
            f"{path}: not an IDX file of uint8 values (expected the header bytes 00 00 08 "
            f"<ndim>, got {data[:4].hex(' ') or 'an empty file'})"
        )
    ndim = data[3]
    shape = (
        tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
        if len(data) >= 4 + 4 * ndim
        else ()
    )
    values = data[4 + 4 * ndim :]
    if len(shape) != ndim or len(values) != int(np.prod(shape)):
        raise DatasetFileError(
            f"{path}: the header promises shape {shape} ({int(np.prod(shape))} values), the file "
            f"holds {len(values)}; the file is truncated - re-download it"
        )
    return np.frombuffer(values, dtype=np.uint8).reshape(shape)


def _find_idx(folder: str, stem: str) -> Optional[str]:
    for path in (os.path.join(folder, stem), os.path.join(folder, stem + ".gz")):
        if os.path.isfile(path):
            return path
    return None


def _idx_folder(name: str, root: str) -> Optional[str]:
    """The first folder, in the search order of the module docstring, that holds all four files."""
    subfolders, debian, _, _ = _IDX_SETS[name]
    stems = [stem for pair in _IDX_FILES.values() for stem in pair]
    for folder in [os.path.join(root, sub) for sub in subfolders] + [debian]:
        if all(_find_idx(folder, stem) for stem in stems):
            return folder
    return None


def idx_val_indices(targets: np.ndarray) -> np.ndarray:
    """The validation carve-out of the training file: per class, ``_IDX_VAL_PER_CLASS`` indices drawn by a
    fixed generator (sorted)."""
    rng = np.random.default_rng(_IDX_VAL_SEED)
    chosen = [
        rng.permutation(np.flatnonzero(targets == label))[:_IDX_VAL_PER_CLASS] for label in np.unique(targets)
    ]
    return np.sort(np.concatenate(chosen))


def _build_idx(name: str, root: str, split: str, download: bool) -> Dataset:
    subfolders, debian, package, torchvision_class = _IDX_SETS[name]
    folder = _idx_folder(name, root)
    if folder is None and download:
        import torchvision

        fetch = getattr(torchvision.datasets, torchvision_class)
        _download(
            name,
            root,
            [os.path.join(subfolders[2], s) for s in _IDX_FILES["trainval"]],
            lambda: fetch(root, train=True, download=True),
        )
        folder = _idx_folder(name, root)
    if folder is None:
        searched = [os.path.join(root, sub) or "." for sub in subfolders] + [debian]
        raise DatasetNotFoundError(
            f"dataset {name!r}: no folder holds its four IDX files ({', '.join(s for p in _IDX_FILES.values() for s in p)}, "
            f"each optionally .gz); searched {', '.join(searched)}. Get them with "
            + (f"'apt-get install {package}', or " if package else "")
            + f"data.download=true (needs internet), or put them in {root or 'the current directory'}"
        )
    images_stem, labels_stem = _IDX_FILES["test" if split == "test" else "trainval"]
    images_path, labels_path = _find_idx(folder, images_stem), _find_idx(folder, labels_stem)
    images, labels = read_idx(images_path), read_idx(labels_path).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetFileError(
            f"{images_path}, {labels_path}: expected images (N, H, W) and N labels, got "
            f"{images.shape} and {labels.shape}"
        )
    if split in ("train", "val"):
        is_val = np.zeros(len(labels), dtype=bool)
        is_val[idx_val_indices(labels)] = True
        keep = np.flatnonzero(is_val if split == "val" else ~is_val)
        images, labels = images[keep], labels[keep]
    return ArrayImages(images, labels)


# --------------------------------------------------------------------------------------------- digits
_DIGITS_SPLIT_SEED = 0  # fixed: the train/test split never depends on a run's seed
_DIGITS_TEST_FRACTION = 0.2


def _digits_split_indices(targets: np.ndarray, split: str) -> np.ndarray:
    """Stratified split: per class, a fixed shuffle; the first 20 % (rounded) of each class is test."""
    if split == "all":
        return np.arange(len(targets))
    rng = np.random.default_rng(_DIGITS_SPLIT_SEED)
    test = []
    for label in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == label))
        test.append(members[: int(round(_DIGITS_TEST_FRACTION * len(members)))])
    is_test = np.zeros(len(targets), dtype=bool)
    is_test[np.concatenate(test)] = True
    return np.flatnonzero(is_test if split == "test" else ~is_test)


class DigitsImages(Dataset):
    """scikit-learn's 8x8 digits as uint8 grey images, resized to ``image_size`` (bilinear) per item."""

    def __init__(self, split: str, image_size: int):
        from sklearn.datasets import load_digits

        digits = load_digits()
        keep = _digits_split_indices(digits.target, split)
        self.images = np.round(digits.images[keep] * (255.0 / 16.0)).astype(np.uint8)
        self.targets = digits.target[keep].astype(np.int64)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Item:
        index = _check_index(index, len(self))
        grey = Image.fromarray(self.images[index])
        grey = grey.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        return grey.convert("RGB"), int(self.targets[index])


# ------------------------------------------------------------------------------------------ synthetic
_SYNTHETIC_CLASS_SEED = 7919  # fixed: class patterns are shared by every split and seed
_SYNTHETIC_SPLIT_STREAM = {"train": 0, "test": 1}


class SyntheticImages(Dataset):
    """Per-class two-colour gratings with per-image jitter and noise, generated from (seed, split, index)."""

    def __init__(self, num_samples: int, num_classes: int, image_size: int, seed: int, split: str):
        self.num_samples, self.num_classes, self.image_size = num_samples, num_classes, image_size
        self.seed, self.stream = seed, _SYNTHETIC_SPLIT_STREAM[split]
        self.targets = np.arange(num_samples, dtype=np.int64) % num_classes

    def __len__(self) -> int:
        return self.num_samples

    @staticmethod
    def class_pattern(label: int) -> Tuple[float, float, np.ndarray, np.ndarray]:
        """(orientation rad, frequency in cycles per image, colour a, colour b) of one class."""
        rng = np.random.default_rng([_SYNTHETIC_CLASS_SEED, label])
        return (
            rng.uniform(0, np.pi),
            rng.uniform(1.5, 4.0),
            rng.uniform(0.15, 0.85, 3),
            rng.uniform(0.15, 0.85, 3),
        )

    def __getitem__(self, index: int) -> Item:
        index = _check_index(index, len(self))
        label = int(self.targets[index])
        angle, frequency, colour_a, colour_b = self.class_pattern(label)
        rng = np.random.default_rng([self.seed, self.stream, index])
        angle += rng.normal(0.0, 0.15)
        frequency *= rng.uniform(0.85, 1.15)
        phase, contrast = rng.uniform(0, 2 * np.pi), rng.uniform(0.6, 1.0)
        shift = rng.normal(0.0, 0.08, 3)
        grid = np.arange(self.image_size, dtype=np.float64) / self.image_size
        along = np.cos(angle) * grid[None, :] + np.sin(angle) * grid[:, None]
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * frequency * along + phase)[..., None]  # (H, W, 1)
        image = wave * colour_a + (1.0 - wave) * colour_b
        mean = 0.5 * (colour_a + colour_b)
        image = mean + contrast * (image - mean) + shift + rng.normal(0.0, 0.12, image.shape)
        pixels = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
        return Image.fromarray(pixels), label


# ------------------------------------------------------------------------------------------- subsets
_SUBSET_SEED = 0  # fixed: a subset of N images is the same for every run and seed


def subset_indices(targets: np.ndarray, size: int) -> np.ndarray:
    """``size`` indices of a fixed class-balanced subset (sorted): the items are shuffled by a fixed
    generator and taken in rounds of one per class (the first of each class, then the second, ...), so
    classes differ in count by at most one where each has enough items; a larger subset contains every
    smaller one."""
    targets = np.asarray(targets)
    order = np.random.default_rng(_SUBSET_SEED).permutation(len(targets))
    shuffled = targets[order]
    by_class = np.argsort(shuffled, kind="stable")  # positions in `order`, grouped by class, shuffled within
    starts = np.searchsorted(shuffled[by_class], shuffled[by_class], side="left")
    rank = np.empty(len(targets), dtype=np.int64)
    rank[by_class] = np.arange(len(targets)) - starts  # each item's position within its class
    rounds = np.lexsort((shuffled, rank))  # round 0 of every class (by label), then round 1, ...
    return np.sort(order[rounds[:size]])


class SubsetImages(Dataset):
    """The items ``indices`` of a dataset, with their ``targets``."""

    def __init__(self, dataset: Dataset, indices: np.ndarray):
        self.dataset, self.indices = dataset, indices
        self.targets = np.asarray(dataset.targets)[indices]
        self.classes = getattr(dataset, "classes", None)  # imagefolder's class names, whatever the subset

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Item:
        return self.dataset[int(self.indices[_check_index(index, len(self))])]


# ------------------------------------------------------------------------------------------- builder
def build_dataset(
    name: str,
    root: str,
    split: str,
    *,
    download: bool = False,
    image_size: int = 32,
    num_samples: int = 512,
    num_classes: Optional[int] = None,
    seed: int = 0,
    subset: int = 0,
) -> Dataset:
    """Build a raw dataset yielding ``(RGB PIL image, int label)``; layouts in the module docstring.

    ``image_size`` applies to ``digits`` and ``synthetic`` only (files are read at their native size);
    ``num_samples``, ``num_classes`` (None: 10) and ``seed`` apply to ``synthetic`` only. ``subset`` > 0
    keeps that many images of the split, a fixed class-balanced choice (:func:`subset_indices`).
    """
    dataset = _build_split(name, root, split, download, image_size, num_samples, num_classes, seed)
    if subset <= 0:
        return dataset
    if subset > len(dataset):
        raise ConfigError(
            f"data.subset={subset} is larger than {name!r} split {split!r} ({len(dataset)} images): "
            f"set data.subset to at most {len(dataset)}, or 0 for all of them"
        )
    return SubsetImages(dataset, subset_indices(dataset.targets, subset))


def _build_split(
    name: str,
    root: str,
    split: str,
    download: bool,
    image_size: int,
    num_samples: int,
    num_classes: Optional[int],
    seed: int,
) -> Dataset:
    if name not in DATASET_INFO:
        raise ConfigError(f"unknown dataset {name!r}; valid choices (data.name): {', '.join(DATASET_INFO)}")
    splits = DATASET_INFO[name].splits
    if split not in splits and name != "folder":  # a folder has no splits: data.root is the images
        raise ConfigError(
            f"unknown split {split!r} for dataset {name!r}; valid choices (data.split): {', '.join(splits)}"
        )
    root = os.fspath(root)
    if name == "synthetic":
        num_classes = DATASET_INFO["synthetic"].num_classes if num_classes is None else num_classes
        if num_samples < 1 or num_classes < 1 or image_size < 1:
            raise ConfigError(
                f"synthetic: num_samples, num_classes and image_size must be >= 1, got "
                f"{num_samples}, {num_classes}, {image_size}"
            )
        return SyntheticImages(num_samples, num_classes, image_size, seed, split)
    if name == "digits":
        if image_size < 1:
            raise ConfigError(f"digits: image_size must be >= 1, got {image_size}")
        return DigitsImages(split, image_size)
    if name == "stl10":
        return _build_stl10(root, split, download)
    if name in _CIFAR:
        return _build_cifar(name, root, split, download)
    if name == "tiny_imagenet":
        return _build_tiny_imagenet(root, split)
    if name == "folder":
        return _build_folder(root)
    if name in _IDX_SETS:
        return _build_idx(name, root, split, download)
    return _build_imagefolder(root, split)
