"""Raw dataset readers: tiny files in the exact on-disk formats are written and read back pixel-exactly."""

import os
import pickle
from collections import Counter

import numpy as np
import pytest
import torchvision
from PIL import Image

from ssmix.data.datasets import (
    DATASET_INFO,
    CorruptImageError,
    DatasetNotFoundError,
    build_dataset,
    dataset_info,
)


def _rgb(item):
    image, label = item
    assert isinstance(image, Image.Image) and image.mode == "RGB" and isinstance(label, int)
    return np.asarray(image), label


def _images(rng, count, side):
    """Asymmetric images: a horizontal ramp in R, a vertical ramp in G, noise in B."""
    ramp = np.linspace(0, 255, side).astype(np.uint8)
    images = rng.integers(0, 256, (count, side, side, 3), dtype=np.uint8)
    images[:, :, :, 0] = ramp[None, None, :]
    images[:, :, :, 1] = ramp[None, :, None]
    return images


def _roundtrip(dataset):
    copy = pickle.loads(pickle.dumps(dataset))
    assert len(copy) == len(dataset)
    for index in (0, len(dataset) - 1):
        assert np.array_equal(_rgb(copy[index])[0], _rgb(dataset[index])[0])
        assert copy[index][1] == dataset[index][1]
    return copy


# ------------------------------------------------------------------------------------------- STL-10
def _stl_bytes(images):
    """Format as documented: per image, R, G, B planes, each 96x96 plane stored column-major."""
    return b"".join(image[:, :, c].flatten(order="F").tobytes() for image in images for c in range(3))


def _write_stl(root, rng):
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    data = {"train": _images(rng, 3, 96), "test": _images(rng, 2, 96), "unlabeled": _images(rng, 4, 96)}
    labels = {"train": np.array([1, 10, 4], np.uint8), "test": np.array([7, 2], np.uint8)}
    for split, images in data.items():
        (folder / f"{split}_X.bin").write_bytes(_stl_bytes(images))
    for split, y in labels.items():
        (folder / f"{split}_y.bin").write_bytes(y.tobytes())
    return data, labels


def test_stl10_pixels_labels_and_concatenation(tmp_path):
    data, labels = _write_stl(tmp_path, np.random.default_rng(0))
    for split in ("train", "test", "unlabeled"):
        dataset = build_dataset("stl10", str(tmp_path), split)
        assert len(dataset) == len(data[split])
        for i in range(len(dataset)):
            pixels, label = _rgb(dataset[i])
            assert np.array_equal(pixels, data[split][i])
            assert label == (int(labels[split][i]) - 1 if split in labels else -1)
    both = build_dataset("stl10", str(tmp_path), "train+unlabeled")
    assert len(both) == 7
    assert [both[i][1] for i in range(7)] == [0, 9, 3, -1, -1, -1, -1]
    assert list(both.targets) == [0, 9, 3, -1, -1, -1, -1]
    assert np.array_equal(_rgb(both[2])[0], data["train"][2])
    assert np.array_equal(_rgb(both[3])[0], data["unlabeled"][0])
    assert np.array_equal(_rgb(both[-1])[0], data["unlabeled"][3])
    with pytest.raises(IndexError):
        both[7]


def test_stl10_orientation_first_bytes_are_the_left_column(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    raw = np.zeros(3 * 96 * 96, np.uint8)
    raw[:96] = 255  # first 96 bytes of the red plane = column x=0, rows y=0..95
    (folder / "test_X.bin").write_bytes(raw.tobytes())
    (folder / "test_y.bin").write_bytes(bytes([1]))
    pixels, label = _rgb(build_dataset("stl10", str(tmp_path), "test")[0])
    assert label == 0
    assert (pixels[:, 0, 0] == 255).all() and pixels[:, 1:, 0].sum() == 0 and pixels[..., 1:].sum() == 0


def test_stl10_pickles_without_the_mapped_file(tmp_path):
    _write_stl(tmp_path, np.random.default_rng(1))
    dataset = build_dataset("stl10", str(tmp_path), "train+unlabeled")
    dataset[5]  # opens the unlabeled memmap
    assert len(pickle.dumps(dataset)) < 4096  # 4 images would be 110 kB
    _roundtrip(dataset)


def test_stl10_missing_and_truncated(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        build_dataset("stl10", str(tmp_path), "unlabeled")
    message = str(error.value)
    assert os.path.join(str(tmp_path), "stl10_binary", "unlabeled_X.bin") in message
    assert "data.download=true" in message and "'stl10'" in message
    (tmp_path / "stl10_binary").mkdir()
    (tmp_path / "stl10_binary" / "unlabeled_X.bin").write_bytes(bytes(100))
    with pytest.raises(ValueError, match="not a whole number"):
        build_dataset("stl10", str(tmp_path), "unlabeled")


def test_stl10_download_calls_torchvision_then_reads_our_way(tmp_path, monkeypatch):
    calls = []

    def fake_stl10(root, split, download):
        calls.append((root, split, download))
        _write_stl(tmp_path, np.random.default_rng(2))

    monkeypatch.setattr(torchvision.datasets, "STL10", fake_stl10)
    dataset = build_dataset("stl10", str(tmp_path), "test", download=True)
    assert calls == [(str(tmp_path), "train", True)] and len(dataset) == 2
    build_dataset("stl10", str(tmp_path), "test", download=True)
    assert len(calls) == 1  # files present: no second download

    def offline(root, split, download):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "STL10", offline)
    with pytest.raises(DatasetNotFoundError, match="no network"):
        build_dataset("stl10", str(tmp_path / "elsewhere"), "train", download=True)


# -------------------------------------------------------------------------------------------- CIFAR
def _cifar_rows(images):
    """Format as documented: R plane, G plane, B plane, each 32x32 row-major."""
    return np.stack([np.concatenate([image[:, :, c].ravel() for c in range(3)]) for image in images])


def _write_pickle(path, payload):
    with open(path, "wb") as f:
        pickle.dump(payload, f)


def test_cifar10_reads_all_batches_in_order(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    train = _images(rng, 5, 32)
    for b in range(5):
        _write_pickle(
            folder / f"data_batch_{b + 1}", {b"data": _cifar_rows(train[b : b + 1]), b"labels": [b * 2]}
        )
    test = _images(rng, 2, 32)
    _write_pickle(folder / "test_batch", {b"data": _cifar_rows(test), b"labels": [9, 1]})
    dataset = build_dataset("cifar10", str(tmp_path), "train")
    assert len(dataset) == 5
    for i in range(5):
        pixels, label = _rgb(dataset[i])
        assert np.array_equal(pixels, train[i]) and label == 2 * i
    dataset = _roundtrip(build_dataset("cifar10", str(tmp_path), "test"))
    assert [dataset[i][1] for i in range(2)] == [9, 1]
    assert np.array_equal(_rgb(dataset[1])[0], test[1])


def test_cifar_row_layout_first_bytes_are_the_red_top_row(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    row = np.zeros((1, 3072), np.uint8)
    row[0, :32] = 200
    payload = {b"data": row, b"fine_labels": [42], b"coarse_labels": [3]}
    _write_pickle(folder / "test", payload)
    pixels, label = _rgb(build_dataset("cifar100", str(tmp_path), "test")[0])
    assert label == 42  # fine labels, not coarse
    assert (pixels[0, :, 0] == 200).all() and pixels[1:, :, 0].sum() == 0 and pixels[..., 1:].sum() == 0


def test_cifar100_train_and_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        build_dataset("cifar100", str(tmp_path), "train")
    assert os.path.join(str(tmp_path), "cifar-100-python", "train") in str(error.value)
    assert "data.download=true" in str(error.value)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    images = _images(np.random.default_rng(4), 3, 32)
    _write_pickle(folder / "train", {b"data": _cifar_rows(images), b"fine_labels": [99, 0, 50]})
    dataset = build_dataset("cifar100", str(tmp_path), "train")
    assert list(dataset.targets) == [99, 0, 50]
    assert np.array_equal(_rgb(dataset[2])[0], images[2])
    _write_pickle(folder / "test", {b"data": _cifar_rows(images), b"labels": [1, 2, 3]})
    with pytest.raises(ValueError, match="fine_labels"):
        build_dataset("cifar100", str(tmp_path), "test")


# ------------------------------------------------------------------------------------ Tiny-ImageNet
def _save_lossless(image, path):
    Image.fromarray(image).save(path, format="PNG")  # PIL reads by content, so the .JPEG name is fine


def test_tiny_imagenet_train_and_val(tmp_path):
    rng = np.random.default_rng(5)
    base = tmp_path / "tiny-imagenet-200"
    wnids = ["n03", "n01", "n02"]  # unsorted on purpose: class index follows sorted order
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    train = {}
    for wnid in wnids:
        (base / "train" / wnid / "images").mkdir(parents=True)
        for k in range(2):
            train[(wnid, k)] = _images(rng, 1, 64)[0]
            _save_lossless(train[(wnid, k)], base / "train" / wnid / "images" / f"{wnid}_{k}.JPEG")
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("ignored\n")
    grey = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(grey).save(base / "val" / "images" / "val_1.JPEG", format="PNG")
    val0 = _images(rng, 1, 64)[0]
    _save_lossless(val0, base / "val" / "images" / "val_0.JPEG")
    (base / "val" / "val_annotations.txt").write_text(
        "val_1.JPEG\tn02\t0\t0\t10\t10\nval_0.JPEG\tn03\t1\t2\t3\t4\n"
    )

    dataset = build_dataset("tiny_imagenet", str(tmp_path), "train")
    assert len(dataset) == 6 and list(dataset.targets) == [0, 0, 1, 1, 2, 2]
    pixels, label = _rgb(dataset[4])
    assert label == 2 and np.array_equal(pixels, train[("n03", 0)])
    val = _roundtrip(build_dataset("tiny_imagenet", str(tmp_path), "val"))
    assert len(val) == 2
    pixels, label = _rgb(val[0])
    assert label == 2 and np.array_equal(pixels, val0)
    pixels, label = _rgb(val[1])
    assert label == 1 and np.array_equal(pixels, np.repeat(grey[..., None], 3, axis=2))


def test_tiny_imagenet_missing_names_the_layout_and_source(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        build_dataset("tiny_imagenet", str(tmp_path), "val", download=True)
    message = str(error.value)
    assert os.path.join(str(tmp_path), "tiny-imagenet-200", "val", "val_annotations.txt") in message
    assert "tiny-imagenet-200.zip" in message and "data.download=true" not in message


# -------------------------------------------------------------------------------------- ImageFolder
def test_imagefolder_reads_rgb_with_sorted_classes(tmp_path):
    rng = np.random.default_rng(6)
    (tmp_path / "val" / "zebra").mkdir(parents=True)
    (tmp_path / "val" / "ant").mkdir(parents=True)
    ant = _images(rng, 1, 20)[0]
    _save_lossless(ant, tmp_path / "val" / "ant" / "a.png")
    rgba = rng.integers(0, 256, (20, 20, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "val" / "zebra" / "z.png")
    dataset = _roundtrip(build_dataset("imagefolder", str(tmp_path), "val"))
    assert len(dataset) == 2
    pixels, label = _rgb(dataset[0])
    assert label == 0 and np.array_equal(pixels, ant)
    pixels, label = _rgb(dataset[1])
    assert label == 1 and np.array_equal(pixels, rgba[..., :3])
    with pytest.raises(DatasetNotFoundError, match=os.path.join(str(tmp_path), "train")):
        build_dataset("imagefolder", str(tmp_path), "train")


# ------------------------------------------------------------------------------------------- folder
def _write_folder(root, rng):
    """Images at three depths with odd extensions (lossless formats, so pixels round-trip)."""
    images = _images(rng, 4, 12)
    files = {"a/b/c/deep.PNG": images[0], "top.tif": images[1], "x/y.webp": images[2], "x/z.Png": images[3]}
    for name, pixels in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, **({"lossless": True} if name.endswith(".webp") else {}))
    Image.fromarray(images[0]).save(root / "x" / "photo.jpeg", quality=95)
    (root / "x" / "notes.txt").write_text("not an image")
    return files


def test_folder_reads_every_image_at_any_depth_unlabelled(tmp_path):
    files = _write_folder(tmp_path, np.random.default_rng(3))
    dataset = _roundtrip(build_dataset("folder", str(tmp_path), "train"))
    expected = sorted([*files, "x/photo.jpeg"], key=lambda name: os.path.join(str(tmp_path), name))
    assert [os.path.relpath(p, tmp_path) for p in dataset.paths] == [os.path.normpath(n) for n in expected]
    assert list(dataset.targets) == [-1] * 5
    for index, name in enumerate(expected):
        pixels, label = _rgb(dataset[index])
        assert label == -1
        if name in files:
            assert np.array_equal(pixels, files[name]), name
        else:
            assert pixels.shape == (12, 12, 3)


def test_folder_without_images_or_missing_names_the_root(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.md").write_text("x")
    with pytest.raises(DatasetNotFoundError, match="image files"):
        build_dataset("folder", str(tmp_path / "empty"), "train")
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "nowhere")):
        build_dataset("folder", str(tmp_path / "nowhere"), "train")


def test_corrupt_image_is_a_one_line_error_naming_the_file(tmp_path):
    import torch

    _write_folder(tmp_path, np.random.default_rng(4))
    bad = tmp_path / "x" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    dataset = build_dataset("folder", str(tmp_path), "train")
    index = [str(p) for p in dataset.paths].index(str(bad))
    with pytest.raises(CorruptImageError) as error:
        dataset[index]
    message = str(error.value)
    assert message.startswith(f"{bad}: not a readable image (") and "\n" not in message
    assert message.endswith("delete or replace the file")
    # Raised in a DataLoader worker, the re-raised error keeps the same single line.
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, [index]), num_workers=1, collate_fn=lambda items: items
    )
    with pytest.raises(CorruptImageError) as error:
        next(iter(loader))
    assert str(error.value) == message


def test_mean_std_num_classes_overrides_and_their_errors():
    info = dataset_info("cifar10", mean=[0.1, 0.2, 0.3], num_classes=4)
    assert info.mean == (0.1, 0.2, 0.3) and info.std == DATASET_INFO["cifar10"].std and info.num_classes == 4
    assert (
        dataset_info("folder").num_classes == 0 and dataset_info("folder").mean == DATASET_INFO["stl10"].mean
    )
    with pytest.raises(ValueError, match=r"^data.std: expected 3 per-channel values \(R, G, B, > 0\)"):
        dataset_info("folder", std=[0.2, 0.0, 0.2])
    with pytest.raises(ValueError, match=r"^data.mean: expected 3 per-channel values"):
        dataset_info("folder", mean=[0.5])


# ------------------------------------------------------------------------------------------- digits
def test_digits_split_is_a_stable_stratified_partition():
    from sklearn.datasets import load_digits

    target = load_digits().target
    splits = {s: build_dataset("digits", "", s, seed=s == "train") for s in ("train", "test", "all")}
    assert (len(splits["train"]), len(splits["test"]), len(splits["all"])) == (1438, 359, 1797)
    counts = np.bincount(target)
    assert np.array_equal(np.bincount(splits["test"].targets), np.round(0.2 * counts).astype(int))
    assert np.array_equal(np.bincount(splits["train"].targets), counts - np.round(0.2 * counts).astype(int))

    def content(dataset):
        return Counter((dataset.images[i].tobytes(), int(dataset.targets[i])) for i in range(len(dataset)))

    assert content(splits["train"]) + content(splits["test"]) == content(splits["all"])
    again = build_dataset("digits", "", "test", seed=123)
    assert content(again) == content(splits["test"])
    assert np.array_equal(_rgb(again[7])[0], _rgb(splits["test"][7])[0])


def test_digits_pixels_and_resize():
    from sklearn.datasets import load_digits

    digits = load_digits()
    native = build_dataset("digits", "", "all", image_size=8)
    pixels, label = _rgb(native[5])
    expected = np.round(digits.images[5] * 255 / 16).astype(np.uint8)
    assert label == digits.target[5]
    assert all(np.array_equal(pixels[..., c], expected) for c in range(3))
    pixels, _ = _rgb(build_dataset("digits", "", "train", image_size=24)[0])
    assert pixels.shape == (24, 24, 3)
    _roundtrip(native)


# ---------------------------------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_and_seeded():
    a = build_dataset("synthetic", "", "train", image_size=16, num_samples=12, num_classes=3, seed=5)
    b = _roundtrip(
        build_dataset("synthetic", "", "train", image_size=16, num_samples=12, num_classes=3, seed=5)
    )
    assert len(a) == 12 and [a[i][1] for i in range(12)] == [i % 3 for i in range(12)]
    for i in (0, 7, 11):
        assert np.array_equal(_rgb(a[i])[0], _rgb(a[i])[0]) and np.array_equal(_rgb(a[i])[0], _rgb(b[i])[0])
    assert _rgb(a[0])[0].shape == (16, 16, 3)
    other_seed = build_dataset("synthetic", "", "train", image_size=16, num_samples=12, num_classes=3, seed=6)
    test_split = build_dataset("synthetic", "", "test", image_size=16, num_samples=12, num_classes=3, seed=5)
    assert not np.array_equal(_rgb(a[0])[0], _rgb(other_seed[0])[0])
    assert not np.array_equal(_rgb(a[0])[0], _rgb(test_split[0])[0])
    assert not np.array_equal(_rgb(a[0])[0], _rgb(a[3])[0])  # same class, different image


def test_synthetic_classes_are_learnable_from_train_to_test():
    train = build_dataset("synthetic", "", "train", image_size=16, num_samples=80, num_classes=4, seed=0)
    test = build_dataset("synthetic", "", "test", image_size=16, num_samples=80, num_classes=4, seed=0)

    def colours(dataset):
        return np.stack([_rgb(dataset[i])[0].reshape(-1, 3).mean(0) for i in range(len(dataset))])

    centroids = np.stack([colours(train)[train.targets == c].mean(0) for c in range(4)])
    guess = np.argmin(((colours(test)[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (guess == test.targets).mean() > 0.5  # chance is 0.25


# ------------------------------------------------------------------------------------------ choices
def test_unknown_name_or_split_lists_choices():
    with pytest.raises(ValueError, match="cifar10.*tiny_imagenet"):
        build_dataset("svhn", "", "train")
    with pytest.raises(ValueError, match="unlabeled, train, test, train\\+unlabeled"):
        build_dataset("stl10", "", "val")
    assert set(DATASET_INFO) == {
        "synthetic",
        "digits",
        "cifar10",
        "cifar100",
        "stl10",
        "tiny_imagenet",
        "imagefolder",
        "folder",
        "fashion_mnist",
        "mnist",
    }
    assert DATASET_INFO["stl10"].image_size == 96 and DATASET_INFO["tiny_imagenet"].image_size == 96


# ------------------------------------------------------------------------------- Fashion-MNIST / MNIST
def _idx_bytes(array: np.ndarray) -> bytes:
    """The IDX format by hand: 00 00, type 0x08 (uint8), ndim, each dimension big-endian uint32, values."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx_set(folder, rng, train_per_class=502, test_count=30, gz=True):
    """Tiny IDX files in the exact on-disk layout (gzipped or raw): 10 classes, 28x28 images."""
    import gzip

    os.makedirs(folder, exist_ok=True)
    sets = {}
    for prefix, labels in (
        ("train", np.repeat(np.arange(10), train_per_class)),
        ("t10k", np.arange(test_count) % 10),
    ):
        labels = rng.permutation(labels).astype(np.uint8)
        images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        images[:, 0, 0] = labels  # each image carries its label in its first pixel
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = os.path.join(folder, f"{prefix}-{kind}-ubyte")
            data = _idx_bytes(array)
            with gzip.open(name + ".gz", "wb") if gz else open(name, "wb") as f:
                f.write(data)
        sets[prefix] = (images, labels)
    return sets


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx_pixels_labels_and_splits(tmp_path, gz):
    sets = _write_idx_set(str(tmp_path), np.random.default_rng(0), gz=gz)
    images, labels = sets["train"]
    trainval = build_dataset("fashion_mnist", str(tmp_path), "trainval")
    assert len(trainval) == 5020 and trainval.images.shape == (5020, 28, 28)
    pixels, label = _rgb(trainval[17])
    assert label == labels[17] and pixels.shape == (28, 28, 3)
    assert np.array_equal(pixels, np.repeat(images[17][:, :, None], 3, axis=2))  # grey in all three channels
    val, train = (
        build_dataset("fashion_mnist", str(tmp_path), "val"),
        build_dataset("fashion_mnist", str(tmp_path), "train"),
    )
    assert (
        len(val) == 5000 and len(train) == 20 and Counter(val.targets.tolist()) == {c: 500 for c in range(10)}
    )
    # val and train partition the training file: every image exactly once (the first pixel names it)
    firsts = sorted(map(bytes, np.concatenate([val.images, train.images]).reshape(5020, -1)))
    assert firsts == sorted(map(bytes, images.reshape(5020, -1)))
    test = build_dataset("fashion_mnist", str(tmp_path), "test")
    assert len(test) == 30 and [test[i][1] for i in range(30)] == sets["t10k"][1].tolist()
    assert all(test[i][0].getpixel((0, 0))[0] == test[i][1] for i in range(30))
    _roundtrip(test)


def test_idx_search_order_root_subfolder_and_torchvision_layout(tmp_path):
    _write_idx_set(str(tmp_path / "MNIST" / "raw"), np.random.default_rng(1), train_per_class=500, gz=False)
    assert len(build_dataset("mnist", str(tmp_path), "test")) == 30  # torchvision's <root>/MNIST/raw
    _write_idx_set(str(tmp_path / "mnist"), np.random.default_rng(1), test_count=40)
    assert len(build_dataset("mnist", str(tmp_path), "test")) == 40  # <root>/mnist comes before MNIST/raw
    _write_idx_set(str(tmp_path), np.random.default_rng(1), test_count=50)
    assert len(build_dataset("mnist", str(tmp_path), "test")) == 50  # and the root itself before both


def test_idx_missing_says_how_to_get_the_files(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        build_dataset("mnist", str(tmp_path), "train")  # Debian ships no dataset-mnist here
    message = str(error.value)
    assert "\n" not in message and "apt-get" not in message and "data.download=true" in message
    assert str(tmp_path) in message


def test_fashion_mnist_missing_names_the_debian_package(tmp_path, monkeypatch):
    from ssmix.data import datasets

    subfolders, _, package, source = datasets._IDX_SETS["fashion_mnist"]
    monkeypatch.setitem(
        datasets._IDX_SETS, "fashion_mnist", (subfolders, str(tmp_path / "debian"), package, source)
    )
    with pytest.raises(
        DatasetNotFoundError, match="apt-get install dataset-fashion-mnist', or data.download=true"
    ):
        build_dataset("fashion_mnist", str(tmp_path), "test")


def test_idx_truncated_or_foreign_file_is_one_line(tmp_path):
    import gzip

    from ssmix.data.datasets import DatasetFileError, read_idx

    _write_idx_set(str(tmp_path), np.random.default_rng(2), train_per_class=500)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "rb") as f:
        data = f.read()
    with gzip.open(path, "wb") as f:
        f.write(data[:-5])
    with pytest.raises(DatasetFileError, match="truncated"):
        build_dataset("fashion_mnist", str(tmp_path), "test")
    (tmp_path / "foreign").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(DatasetFileError, match="not an IDX file"):
        read_idx(str(tmp_path / "foreign"))


def test_subset_is_fixed_class_balanced_and_nested():
    from ssmix.data.datasets import subset_indices

    targets = np.array([0] * 50 + [1] * 30 + [2] * 4)
    small, large = subset_indices(targets, 9), subset_indices(targets, 30)
    assert Counter(targets[small].tolist()) == {0: 3, 1: 3, 2: 3}
    assert Counter(targets[large].tolist()) == {
        0: 13,
        1: 13,
        2: 4,
    }  # class 2 runs out; the rest share the rest
    assert set(small) <= set(large) and np.array_equal(small, subset_indices(targets, 9))
    assert len(set(large)) == 30 and np.all(np.diff(large) > 0)


def test_subset_through_build_dataset_and_its_error():
    from ssmix.config import ConfigError

    full = build_dataset("digits", "", "train", image_size=8)
    part = build_dataset("digits", "", "train", image_size=8, subset=100)
    assert len(part) == 100 and Counter(part.targets.tolist()) == {c: 10 for c in range(10)}
    index = part.indices[3]
    assert np.array_equal(np.asarray(part[3][0]), np.asarray(full[index][0])) and part[3][1] == full[index][1]
    with pytest.raises(ConfigError, match="data.subset=5000 is larger"):
        build_dataset("digits", "", "train", subset=5000)


@pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_from_the_debian_package():
    counts = {
        split: len(build_dataset("fashion_mnist", "no-such-root", split))
        for split in ("train", "val", "trainval", "test")
    }
    assert counts == {"train": 55000, "val": 5000, "trainval": 60000, "test": 10000}
    test = build_dataset("fashion_mnist", "no-such-root", "test")
    assert Counter(test.targets.tolist()) == {c: 1000 for c in range(10)}
    assert abs(test.images.mean() / 255 - DATASET_INFO["fashion_mnist"].mean[0]) < 0.01
