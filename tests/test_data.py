import datasets
import numpy as np
import pytest
import torch

from cropd_hf import CRoPDImageProcessor
from cropd_hf import data as data_module
from cropd_hf.data import (
    EMBEDDED_MNIST,
    SKLEARN_DIGITS,
    label_names,
    load_image_dataset,
    pixel_tensors,
    random_shift,
    with_pixel_values,
)
from cropd_hf.metrics import load_robust_accuracy


@pytest.mark.slow
def test_embedded_mnist_is_shuffled_split_4000_1000_with_every_class():
    splits = load_image_dataset(EMBEDDED_MNIST)
    assert (len(splits["train"]), len(splits["test"])) == (4000, 1000)
    assert splits["train"].column_names == ["image", "label"]
    assert label_names(splits["train"]) == [str(d) for d in range(10)]
    test_labels = np.array(splits["test"]["label"])
    assert np.bincount(test_labels, minlength=10).min() >= 70, "sorted-by-class data was not shuffled"
    assert splits["train"][0]["image"].size == (28, 28)
    again = load_image_dataset(EMBEDDED_MNIST)
    assert list(again["test"]["label"]) == list(test_labels), "the split is fixed by the seed"
    assert list(load_image_dataset(EMBEDDED_MNIST, seed=1)["test"]["label"]) != list(test_labels)


@pytest.mark.slow
def test_validation_split_is_held_out_of_train():
    splits = load_image_dataset(EMBEDDED_MNIST, validation_size=500)
    assert (len(splits["train"]), len(splits["validation"]), len(splits["test"])) == (3500, 500, 1000)
    with pytest.raises(ValueError, match="validation_size=4000"):
        load_image_dataset(EMBEDDED_MNIST, validation_size=4000)


def test_sklearn_digits_are_scaled_to_8_bits():
    splits = load_image_dataset(SKLEARN_DIGITS)
    assert len(splits["train"]) + len(splits["test"]) == 1797
    image = np.asarray(splits["train"][0]["image"])
    assert image.shape == (8, 8) and image.dtype == np.uint8 and image.max() > 200


def test_unknown_dataset_is_refused():
    with pytest.raises(ValueError, match="Unknown dataset 'mnist'; accepted"):
        load_image_dataset("mnist")


def test_hub_datasets_get_image_and_label_columns(monkeypatch):
    # load_dataset needs the Hub; a local stand-in with CIFAR-100's column names checks the mapping.
    images = [np.zeros((32, 32, 3), dtype=np.uint8)] * 4
    split = datasets.Dataset.from_dict(
        {"img": images, "fine_label": [0, 1, 2, 3], "coarse_label": [0, 0, 1, 1]},
        features=datasets.Features(
            {
                "img": datasets.Image(),
                "fine_label": datasets.ClassLabel(names=["a", "b", "c", "d"]),
                "coarse_label": datasets.Value("int64"),
            }
        ),
    )
    calls = []

    def fake_load_dataset(path, name=None):
        calls.append((path, name))
        return datasets.DatasetDict(train=split, test=split)

    monkeypatch.setattr(data_module, "load_dataset", fake_load_dataset)
    splits = load_image_dataset("cifar100")
    assert calls == [("cifar100", None)]
    assert splits["train"].column_names == ["image", "label"]
    assert label_names(splits["test"]) == ["a", "b", "c", "d"]


@pytest.mark.slow
def test_pixel_values_come_from_the_image_processor():
    test = load_image_dataset(EMBEDDED_MNIST)["test"].select(range(6))
    processor = CRoPDImageProcessor(size={"height": 28, "width": 28}, num_channels=1)
    pixel_values, labels = pixel_tensors(test, processor)
    assert pixel_values.shape == (6, 1, 28, 28) and pixel_values.dtype == torch.float32
    assert pixel_values.min() >= 0 and pixel_values.max() <= 1
    rows = with_pixel_values(test, processor)[:6]
    assert torch.equal(rows["pixel_values"], pixel_values) and torch.equal(rows["labels"], labels)


def test_robust_accuracy_metric_loads_offline_and_takes_the_worst_case_per_sample():
    metric = load_robust_accuracy()
    assert metric.compute(predictions=[1, 2, 0, 3], references=[1, 2, 2, 3]) == {"accuracy": 0.75, "num_samples": 4}
    # Sample 0 survives both attacks, sample 1 falls to the second: worst case 1/2.
    worst = metric.compute(predictions=[[1, 1], [2, 0]], references=[1, 2])
    assert worst == {"accuracy": 0.5, "num_samples": 2}


def test_random_shift_translates_each_image_with_zero_padding():
    images = torch.zeros(64, 2, 9, 7)
    images[:, :, 4, 3] = torch.arange(1.0, 65.0)[:, None]  # one bright pixel per image, in the middle
    shifted = random_shift(images, 2, generator=torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape
    rows, columns = [], []
    for image, original in zip(shifted, images, strict=True):
        (channel_0, row, column), (channel_1, *_) = torch.nonzero(image).tolist()
        assert (channel_0, channel_1) == (0, 1) and image[0, row, column] == original[0, 4, 3]
        rows.append(row - 4)
        columns.append(column - 3)
    assert set(rows) == set(columns) == {-2, -1, 0, 1, 2}, "every offset in [-2, 2], both ways"
    assert random_shift(images, 0) is images
    edge = torch.ones(1, 1, 5, 5)
    assert random_shift(edge.expand(32, 1, 5, 5), 1).sum() < 32 * 25, "pixels pushed out are replaced by zeros"
    with pytest.raises(ValueError, match=r"max_shift must be an integer in \[0, 7\)"):
        random_shift(images, 7)
