"""The robust-image-classification pipeline: every input kind, every attack, bad inputs, and remote code."""

import json
import math
import os
import re
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_without_cropd_hf
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

from cropd_hf import (
    CRoPDForImageClassification,
    CRoPDImageProcessor,
    RobustImageClassificationPipeline,
)
from cropd_hf.attacks import FGSM
from cropd_hf.pipeline_cropd import (
    MAX_IMAGE_SIDE,
    NO_PURIFIER_CHAIN,
    PURIFIER_HEAD_CHAIN,
    TASK,
    UNDEFENDED_MODEL_CHAIN,
)

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "cropd_hf"
PREDICTIONS = ("clean", "clean_without_purifier", "attacked_without_purifier", "attacked_with_purifier")
IMAGES = (
    "input",
    "purified",
    "adversarial_without_purifier",
    "perturbation_without_purifier",
    "adversarial_with_purifier",
    "perturbation_with_purifier",
)
LABELS = {0: "zero", 1: "one", 2: "two"}


def save_checkpoint(config, folder: Path) -> Path:
    """A checkpoint as training/train.py writes it: model and image processor, each through save_pretrained."""
    torch.manual_seed(0)
    CRoPDForImageClassification(config).save_pretrained(folder)
    size = {"height": config.image_size, "width": config.image_size}
    CRoPDImageProcessor(size=size, num_channels=config.num_channels).save_pretrained(folder)
    return folder


@pytest.fixture
def make_robust(tiny_config, tmp_path):
    def make(**overrides) -> RobustImageClassificationPipeline:
        config = tiny_config(id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, **overrides)
        return pipeline(TASK, model=str(save_checkpoint(config, tmp_path / "checkpoint")))

    return make


@pytest.fixture
def robust(make_robust):
    return make_robust()


def gray_image() -> np.ndarray:
    return (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)


def check_prediction(prediction, top_k: int) -> None:
    assert len(prediction) == top_k
    assert {entry["label"] for entry in prediction} <= set(LABELS.values())
    scores = [entry["score"] for entry in prediction]
    assert scores == sorted(scores, reverse=True)
    assert all(0 <= score <= 1 for score in scores) and sum(scores) <= 1 + 1e-6


def test_the_task_loads_a_checkpoint_folder_after_import(robust):
    assert isinstance(robust, RobustImageClassificationPipeline)
    assert isinstance(robust.model, CRoPDForImageClassification)
    assert isinstance(robust.image_processor, CRoPDImageProcessor)


def test_a_model_in_training_mode_is_used_in_eval_mode(tiny_config):
    model = CRoPDForImageClassification(tiny_config()).train()
    processor = CRoPDImageProcessor(size={"height": 8, "width": 8}, num_channels=1)
    robust = pipeline(TASK, model=model, image_processor=processor)
    assert robust.model.training is False
    x = torch.from_numpy(gray_image() / 255.0).float()[None, None]
    expected = model(x).logits[0].softmax(-1).max().item()
    assert robust(gray_image(), attack="fgsm")["clean"][0]["score"] == pytest.approx(expected, abs=1e-6)


def test_every_input_kind_gives_the_answer_of_the_model_itself(robust, tmp_path):
    pixels = gray_image()
    Image.fromarray(pixels).save(tmp_path / "digit.png")
    kinds = {
        "PIL grayscale": Image.fromarray(pixels),
        "PIL RGB": Image.fromarray(pixels).convert("RGB"),
        "uint8 (H, W)": pixels,
        "uint8 (H, W, 1)": pixels[..., None],
        "uint8 (1, H, W)": pixels[None],
        "float (H, W, 3)": np.repeat(pixels[..., None], 3, axis=-1) / 255.0,
        "tensor": torch.from_numpy(pixels),
        "path": str(tmp_path / "digit.png"),
        "pathlib.Path": tmp_path / "digit.png",
    }
    x = torch.from_numpy(pixels / 255.0).float()[None, None]
    expected = robust.model(x).logits[0].softmax(-1)
    for kind, image in kinds.items():
        result = robust(image, top_k=3)
        scores = {entry["label"]: entry["score"] for entry in result["clean"]}
        assert scores == pytest.approx({LABELS[i]: p for i, p in enumerate(expected.tolist())}, abs=1e-5), kind
        assert result["attack"] is None and result["attacked_without_purifier"] is None, kind


@pytest.mark.parametrize("attack", [None, "fgsm", "pgd"])
def test_output_schema_for_each_attack(robust, attack):
    result = robust(gray_image(), attack=attack, top_k=2, return_images=True)
    assert set(result) == {*PREDICTIONS, "attack", "has_purifier", "undefended_chain", "images"}
    assert result["has_purifier"] is True
    # Without undefended_model, the chain without defence is the purifier's own head, and the output says so.
    assert result["undefended_chain"] == PURIFIER_HEAD_CHAIN == "the purifier's head without the purifier"
    for name in PREDICTIONS:
        if attack is None and name != "clean":
            assert result[name] is None
        else:
            check_prediction(result[name], top_k=2)
    assert set(result["images"]) == set(IMAGES)
    for name, image in result["images"].items():
        missing = attack is None and name not in ("input", "purified")
        assert (image is None) == missing, name
        if not missing:
            assert image.shape == (8, 8, 1) and image.dtype == np.float32, name

    settings_ = result["attack"]
    epsilon = robust.model.config.train_epsilon  # the default ε: what the purifier was trained for
    if attack is None:
        assert settings_ is None
    elif attack == "fgsm":
        assert settings_ == {
            "name": "FGSM",
            "eps": epsilon,
            "alpha": epsilon,
            "steps": 1,
            "restarts": 1,
            "random_start": False,
        }
    else:
        assert settings_ == {
            "name": "PGD",
            "eps": epsilon,
            "alpha": pytest.approx(2.5 * epsilon / 10),
            "steps": 10,
            "restarts": 1,
            "random_start": True,
        }


def test_each_chain_is_attacked_on_its_own(robust):
    model = robust.model
    x = torch.from_numpy(gray_image() / 255.0).float()[None, None]
    result = robust(gray_image(), attack="fgsm", epsilon=0.2, return_images=True, top_k=3)
    images = {
        name: None if a is None else torch.from_numpy(a).permute(2, 0, 1)[None] for name, a in result["images"].items()
    }

    # FGSM has no randomness: the two adversarial images must be exactly those of FGSM on each chain.
    undefended = lambda pixels: model(pixels, purify=False)  # noqa: E731
    expected_without = FGSM(0.2)(undefended, x, undefended(x).logits.argmax(-1))
    expected_with = FGSM(0.2)(model, x, model(x).logits.argmax(-1))
    assert torch.equal(images["adversarial_without_purifier"], expected_without)
    assert torch.equal(images["adversarial_with_purifier"], expected_with)
    assert not torch.equal(expected_without, expected_with)
    assert torch.allclose(images["perturbation_with_purifier"], expected_with - x)
    assert torch.allclose(images["perturbation_without_purifier"], expected_without - x)
    assert torch.equal(images["purified"], model.purify(expected_with))

    # The scores are those of each chain on its own adversarial image (and of the chain without it on x).
    for name, logits in (
        ("clean_without_purifier", model(x, purify=False).logits),
        ("attacked_without_purifier", model(expected_without, purify=False).logits),
        ("attacked_with_purifier", model(expected_with).logits),
    ):
        probabilities = logits[0].softmax(-1).tolist()
        assert {e["label"]: e["score"] for e in result[name]} == pytest.approx(
            {LABELS[i]: p for i, p in enumerate(probabilities)}, abs=1e-6
        )


def test_pgd_stays_in_the_ball_and_a_request_gives_the_same_answer_twice(robust):
    first = robust(gray_image(), attack="pgd", epsilon=0.05, steps=3, return_images=True)
    second = robust(gray_image(), attack="pgd", epsilon=0.05, steps=3, return_images=True)
    assert first["attack"]["steps"] == 3 and first["attack"]["alpha"] == pytest.approx(2.5 * 0.05 / 3)
    for chain in ("without_purifier", "with_purifier"):
        adversarial = first["images"][f"adversarial_{chain}"]
        assert np.abs(first["images"][f"perturbation_{chain}"]).max() <= 0.05 + 1e-6
        assert adversarial.min() >= 0 and adversarial.max() <= 1
        assert np.array_equal(adversarial, second["images"][f"adversarial_{chain}"])
    assert first["attacked_with_purifier"] == second["attacked_with_purifier"]


def test_the_identity_baseline_says_it_has_no_purifier(make_robust):
    robust = make_robust(use_purifier=False)
    result = robust(gray_image(), attack="pgd", epsilon=0.1, return_images=True)
    assert result["has_purifier"] is False
    assert result["undefended_chain"] == NO_PURIFIER_CHAIN
    assert result["clean_without_purifier"] == result["clean"]
    assert result["attacked_with_purifier"] is None
    check_prediction(result["attacked_without_purifier"], top_k=3)
    images = result["images"]
    assert images["purified"] is None and images["adversarial_with_purifier"] is None
    assert images["adversarial_without_purifier"] is not None


def test_a_list_gives_one_answer_per_image_in_order(robust):
    images = [gray_image(), 255 - gray_image(), Image.fromarray(gray_image())]
    results = robust(images, attack="fgsm", epsilon=0.1)
    assert isinstance(results, list) and len(results) == 3
    for image, result in zip(images, results, strict=True):
        assert result == robust(image, attack="fgsm", epsilon=0.1)
    assert robust(tuple(images)) == robust(images)


def test_channels_are_converted_both_ways(make_robust):
    rgb_model = make_robust(num_channels=3)
    result = rgb_model(Image.fromarray(gray_image()), attack="fgsm", return_images=True)
    assert result["images"]["input"].shape == (8, 8, 3)
    assert np.array_equal(result["images"]["input"][..., 0], result["images"]["input"][..., 2])

    gray_model = make_robust()
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 1] = 255
    result = gray_model(rgb, return_images=True)
    assert result["images"]["input"] == pytest.approx(np.full((8, 8, 1), 0.587), abs=1e-6)  # luma of pure green


def check_clear_error(error: BaseException) -> None:
    """A ValueError with a message, raised by CRoPD's own checks, not from deep inside torch or PIL."""
    assert isinstance(error, ValueError), f"{type(error).__name__}: {error}"
    assert len(str(error)) > 20
    raised_in = Path(traceback.extract_tb(error.__traceback__)[-1].filename)
    assert raised_in.parent == PACKAGE, f"raised in {raised_in}: {error}"


def test_bad_files_and_huge_images_are_refused_clearly(robust, tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    Image.fromarray(np.zeros((1, MAX_IMAGE_SIDE + 1), np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:-30])
    cases = [
        (str(tmp_path / "notes.png"), "is not an image file"),
        (str(tmp_path / "missing.png"), "No image file"),
        (str(tmp_path / "wide.png"), "too large"),
        (str(tmp_path / "cut.png"), "not a readable image"),
        ("https://example.org/digit.png", "No image file"),  # nothing is fetched
        (Image.new("L", (MAX_IMAGE_SIDE + 1, 3)), "too large"),
        (np.zeros((3, MAX_IMAGE_SIDE + 1), np.uint8), "too large"),
        (np.zeros((2, 2, 2, 2), np.float32), "2 (height, width) or 3"),
        (np.full((8, 8), np.nan, np.float32), "finite"),
        (np.full((8, 8), 2.0, np.float32), "in [0, 1]"),
        (np.zeros((8, 8, 5), np.uint8), "channels"),
        ({"image": gray_image()}, "Unsupported input dict"),
        (None, "Unsupported input NoneType"),
        (12, "Unsupported input int"),
    ]
    for image, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)) as caught:
            robust(image)
        check_clear_error(caught.value)
    with pytest.raises(ValueError, match="empty list"):
        robust([])
    with pytest.raises(ValueError, match="batch_size"):
        robust([gray_image(), gray_image()], batch_size=2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"attack": "bim"}, "attack='bim' is invalid"),
        ({"attack": 1}, "attack=1 is invalid"),
        ({"attack": "pgd", "epsilon": -0.1}, "epsilon=-0.1 is invalid"),
        ({"attack": "pgd", "epsilon": 1.5}, "epsilon=1.5 is invalid"),
        ({"attack": "pgd", "epsilon": float("nan")}, "epsilon=nan is invalid"),
        ({"attack": "pgd", "epsilon": "0.1"}, "epsilon='0.1' is invalid"),
        ({"attack": "pgd", "epsilon": True}, "epsilon=True is invalid"),
        ({"attack": "pgd", "steps": 0}, "steps=0 is invalid"),
        ({"attack": "pgd", "steps": 2.5}, "steps=2.5 is invalid"),
        ({"attack": "fgsm", "steps": 3}, "FGSM takes one step"),
        ({"epsilon": 0.1}, "pass attack='fgsm' or attack='pgd'"),
        ({"top_k": 0}, "top_k=0 is invalid"),
        ({"return_images": "yes"}, "return_images='yes' is invalid"),
    ],
)
def test_bad_options_are_refused_clearly(robust, options, message):
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        robust(gray_image(), **options)
    check_clear_error(caught.value)


def test_top_k_above_the_number_of_classes_gives_every_class(robust):
    result = robust(gray_image(), attack="fgsm", top_k=10)
    for name in PREDICTIONS:
        check_prediction(result[name], top_k=3)


DTYPES = ["uint8", "int8", "int16", "int64", "uint16", "float16", "float32", "float64", "bool", "complex64"]


@st.composite
def image_like_arrays(draw) -> np.ndarray:
    """Arrays an image could be: 2 or 3 dimensions, 1/3/4 channels first or last, values mostly in range."""
    height, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    channels = draw(st.sampled_from([1, 3, 4]))
    shape = draw(st.sampled_from([(height, width), (height, width, channels), (channels, height, width)]))
    if draw(st.booleans()):
        return draw(hnp.arrays(np.uint8, shape))
    dtype = draw(st.sampled_from(["float16", "float32", "float64"]))
    low, high = draw(st.sampled_from([(0.0, 1.0), (-0.5, 1.5)]))
    return draw(hnp.arrays(np.dtype(dtype), shape, elements=st.floats(low, high, width=16)))


ANY_ARRAY = st.one_of(
    image_like_arrays(),
    st.builds(
        lambda dtype, shape, data: data.draw(hnp.arrays(np.dtype(dtype), shape)),
        st.sampled_from(DTYPES),
        hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
        st.data(),
    ),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(array=ANY_ARRAY, as_tensor=st.booleans())
def test_any_array_gets_an_answer_or_a_clear_error(robust, array, as_tensor):
    image = torch.from_numpy(array.copy()) if as_tensor and array.dtype != np.uint16 else array
    try:
        result = robust(image, attack="fgsm", epsilon=0.1, return_images=True)
    except ValueError as error:
        event("refused")
        check_clear_error(error)
        return
    event("answered")
    for name in PREDICTIONS:
        check_prediction(result[name], top_k=3)
    for name, pixels in result["images"].items():
        assert np.isfinite(pixels).all() and pixels.shape == (8, 8, 1), name


def maybe_valid(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Unset, a value of the right kind (in range or not), or junk; junk rarely, so that whole requests pass too."""
    junk = st.one_of(st.booleans(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4))
    return st.integers(0, 9).flatmap(lambda draw: st.none() if draw < 2 else junk if draw == 9 else valid)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    attack=maybe_valid(st.sampled_from(["fgsm", "pgd", "PGD", "FGSM", "bim"])),
    epsilon=maybe_valid(st.floats(-0.5, 1.5) | st.integers(-1, 2)),
    steps=maybe_valid(st.integers(-2, 4)),
    top_k=maybe_valid(st.integers(-1, 5)),
    return_images=maybe_valid(st.booleans()),
)
def test_any_options_get_an_answer_or_a_clear_error(robust, attack, epsilon, steps, top_k, return_images):
    options = {"attack": attack, "epsilon": epsilon, "steps": steps, "top_k": top_k, "return_images": return_images}
    try:
        result = robust(gray_image(), **options)
    except ValueError as error:
        event("refused")
        check_clear_error(error)
        return
    event("answered")
    assert set(result) >= {*PREDICTIONS, "attack", "has_purifier", "undefended_chain"}
    check_prediction(result["clean"], top_k=min(top_k or 5, 3))
    if attack is not None:
        assert result["attack"]["name"] == attack.upper()
        assert math.isclose(result["attack"]["eps"], robust.model.config.train_epsilon if epsilon is None else epsilon)
    assert ("images" in result) == bool(return_images)


def tiny_model(tiny_config, seed: int, **overrides) -> CRoPDForImageClassification:
    torch.manual_seed(seed)
    config = tiny_config(id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, **overrides)
    return CRoPDForImageClassification(config)


def tiny_processor(**overrides) -> CRoPDImageProcessor:
    return CRoPDImageProcessor(**{"size": {"height": 8, "width": 8}, "num_channels": 1, **overrides})


def as_scores(logits: torch.Tensor) -> dict[str, float]:
    return {LABELS[i]: p for i, p in enumerate(logits[0].softmax(-1).tolist())}


def test_a_separate_undefended_model_is_the_chain_without_the_purifier(tiny_config):
    model = tiny_model(tiny_config, seed=0)
    undefended = tiny_model(tiny_config, seed=1, use_purifier=False).train()
    robust = pipeline(TASK, model=model, image_processor=tiny_processor(), undefended_model=undefended)
    plain = pipeline(TASK, model=model, image_processor=tiny_processor())
    assert robust.undefended_model is undefended and undefended.training is False
    x = torch.from_numpy(gray_image() / 255.0).float()[None, None]
    result = robust(gray_image(), attack="fgsm", epsilon=0.2, return_images=True, top_k=3)
    assert result["undefended_chain"] == UNDEFENDED_MODEL_CHAIN == "separate undefended model"
    assert plain(gray_image())["undefended_chain"] == PURIFIER_HEAD_CHAIN

    # The chain without defence is h'(f(x)) of the undefended model, attacked on its own (FGSM: no randomness).
    undefended_chain = lambda pixels: undefended(pixels, purify=False)  # noqa: E731
    expected_without = FGSM(0.2)(undefended_chain, x, undefended(x).logits.argmax(-1))
    adversarial = torch.from_numpy(result["images"]["adversarial_without_purifier"]).permute(2, 0, 1)[None]
    assert torch.equal(adversarial, expected_without)
    head_chain = lambda pixels: model(pixels, purify=False)  # noqa: E731
    assert not torch.equal(expected_without, FGSM(0.2)(head_chain, x, model(x, purify=False).logits.argmax(-1)))
    assert np.allclose(result["images"]["perturbation_without_purifier"][..., 0], (expected_without - x)[0, 0])
    for name, logits in (
        ("clean_without_purifier", undefended(x).logits),
        ("attacked_without_purifier", undefended(expected_without).logits),
        ("clean", model(x).logits),
    ):
        assert {e["label"]: e["score"] for e in result[name]} == pytest.approx(as_scores(logits), abs=1e-6), name

    # The chain with the purifier is the model's, exactly as without an undefended model.
    reference = plain(gray_image(), attack="fgsm", epsilon=0.2, return_images=True, top_k=3)
    assert result["attacked_with_purifier"] == reference["attacked_with_purifier"]
    assert result["clean"] == reference["clean"]
    for name in ("adversarial_with_purifier", "perturbation_with_purifier", "purified", "input"):
        assert np.array_equal(result["images"][name], reference["images"][name]), name
    # Without an attack there is nothing to compare: the chain without defence gives no prediction.
    assert robust(gray_image())["clean_without_purifier"] is None


def test_the_undefended_model_can_be_named_by_its_checkpoint_folder(tiny_config, tmp_path):
    model = tiny_model(tiny_config, seed=0)
    undefended = tiny_model(tiny_config, seed=1, use_purifier=False)
    undefended.save_pretrained(tmp_path / "undefended")
    processor = tiny_processor()
    by_object = pipeline(TASK, model=model, image_processor=processor, undefended_model=undefended)
    for name in (str(tmp_path / "undefended"), tmp_path / "undefended"):
        by_name = pipeline(TASK, model=model, image_processor=processor, undefended_model=name)
        assert type(by_name.undefended_model) is CRoPDForImageClassification
        assert by_name.undefended_model.config.use_purifier is False and not by_name.undefended_model.training
        request = {"attack": "pgd", "epsilon": 0.1, "steps": 2, "return_images": True}
        first, second = by_name(gray_image(), **request), by_object(gray_image(), **request)
        assert first["undefended_chain"] == UNDEFENDED_MODEL_CHAIN
        assert np.array_equal(
            first["images"].pop("adversarial_without_purifier"), second["images"].pop("adversarial_without_purifier")
        )
        assert first["clean_without_purifier"] == second["clean_without_purifier"]
        assert first["attacked_without_purifier"] == second["attacked_without_purifier"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"use_purifier": True}, "undefended_model has a purifier (use_purifier=True)"),
        ({"image_size": 12}, "undefended_model has image_size=12 but the model has 8"),
        ({"num_channels": 3}, "undefended_model has num_channels=3 but the model has 1"),
        ({"id2label": {0: "zero", 1: "one", 2: "deux"}}, "undefended_model has the labels"),
        ({"id2label": {0: "zero", 1: "one"}, "num_labels": 2}, "undefended_model has the labels"),
    ],
)
def test_an_undefended_model_that_does_not_match_is_refused_clearly(tiny_config, overrides, message):
    values = {"use_purifier": False, "id2label": LABELS, **overrides}
    values["label2id"] = {v: k for k, v in values["id2label"].items()}
    torch.manual_seed(1)
    undefended = CRoPDForImageClassification(tiny_config(**values))
    model = tiny_model(tiny_config, seed=0)
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        pipeline(TASK, model=model, image_processor=tiny_processor(), undefended_model=undefended)
    check_clear_error(caught.value)


def test_an_undefended_model_that_is_not_one_is_refused_clearly(tiny_config, tmp_path):
    model = tiny_model(tiny_config, seed=0)
    cases = [
        (torch.nn.Linear(2, 2), "undefended_model must be a CRoPD model without a purifier"),
        (12, "or the path or Hub id of its checkpoint; got int."),
        (str(tmp_path / "missing"), f"undefended_model={str(tmp_path / 'missing')!r} cannot be loaded"),
    ]
    for undefended, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)) as caught:
            pipeline(TASK, model=model, image_processor=tiny_processor(), undefended_model=undefended)
        check_clear_error(caught.value)
    robust = pipeline(TASK, model=model, image_processor=tiny_processor())
    undefended = tiny_model(tiny_config, seed=1, use_purifier=False)
    with pytest.raises(ValueError, match=re.escape("undefended_model is given when the pipeline is made")) as caught:
        robust(gray_image(), undefended_model=undefended)
    check_clear_error(caught.value)


REMOTE_SCRIPT = """
import json
import sys

from transformers import pipeline

folder, image, task, *undefended = sys.argv[1:]
options = {"undefended_model": undefended[0]} if undefended else {}
robust = pipeline(model=folder, trust_remote_code=True, **options) if task == "-" else pipeline(
    task, model=folder, trust_remote_code=True, **options
)
components = [robust, robust.model, robust.image_processor] + [robust.undefended_model] * bool(undefended)
for component in components:
    assert type(component).__module__.startswith("transformers_modules."), type(component)
result = robust(image, attack="pgd", epsilon=0.1, steps=3, top_k=3)
print(type(robust).__name__)
print(json.dumps(result))
"""


def run_without_the_package(tmp_path: Path, *arguments: str) -> tuple[str, dict]:
    """The pipeline's class name and its JSON answer, from REMOTE_SCRIPT run where cropd_hf cannot be imported."""
    name, output = run_without_cropd_hf(REMOTE_SCRIPT, *arguments, folder=tmp_path).strip().splitlines()[-2:]
    return name, json.loads(output)


@pytest.mark.parametrize("task", ["-", TASK])
@pytest.mark.slow
def test_a_checkpoint_saved_with_the_pipeline_runs_it_without_the_package(robust, tmp_path, task):
    folder = tmp_path / "declared"
    robust.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"] == {
        TASK: {
            "impl": "pipeline_cropd.RobustImageClassificationPipeline",
            "pt": ["AutoModelForImageClassification"],
            "type": "image",
        }
    }
    assert {"pipeline_cropd.py", "attacks.py", "preprocessor_config.json"} <= {p.name for p in folder.iterdir()}

    Image.fromarray(gray_image()).save(tmp_path / "digit.png")
    name, output = run_without_the_package(tmp_path, str(folder), str(tmp_path / "digit.png"), task)
    assert name == "RobustImageClassificationPipeline"
    # The checkpoint's copy of the code gives exactly what the package gives.
    expected = robust(str(tmp_path / "digit.png"), attack="pgd", epsilon=0.1, steps=3, top_k=3)
    assert output == json.loads(json.dumps(expected))


@pytest.mark.slow
def test_the_undefended_model_runs_without_the_package_too(robust, tiny_config, tmp_path):
    robust.save_pretrained(tmp_path / "declared")
    tiny_model(tiny_config, seed=1, use_purifier=False).save_pretrained(tmp_path / "undefended")
    Image.fromarray(gray_image()).save(tmp_path / "digit.png")
    arguments = (str(tmp_path / "digit.png"), TASK, str(tmp_path / "undefended"))
    name, output = run_without_the_package(tmp_path, str(tmp_path / "declared"), *arguments)
    assert name == "RobustImageClassificationPipeline"
    assert output["undefended_chain"] == UNDEFENDED_MODEL_CHAIN
    with_package = pipeline(
        TASK, model=robust.model, image_processor=robust.image_processor, undefended_model=tmp_path / "undefended"
    )
    expected = with_package(str(tmp_path / "digit.png"), attack="pgd", epsilon=0.1, steps=3, top_k=3)
    assert output == json.loads(json.dumps(expected))


def test_a_checkpoint_saved_with_the_pipeline_still_loads_in_process_as_a_model(robust, tmp_path):
    robust.save_pretrained(tmp_path / "declared")
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "declared")
    processor = AutoImageProcessor.from_pretrained(tmp_path / "declared")
    reloaded = pipeline(TASK, model=model, image_processor=processor)
    assert type(reloaded) is RobustImageClassificationPipeline and type(model) is CRoPDForImageClassification
    assert reloaded(gray_image(), attack="fgsm") == robust(gray_image(), attack="fgsm")


@pytest.mark.slow
def test_the_latency_benchmark_runs_in_smoke_mode():
    completed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "pipeline_latency.py"), "--smoke"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert re.search(
        r"PGD-10 request \(2 attacks \+ 3 predictions\), 1 torch thread: median \d+\.\d+ s over 3 repetitions, "
        r"(under|OVER) the 2 s target; clean-only request \d+\.\d+ s; ratio \d+\.\dx \(model tiny random",
        completed.stdout,
    ), completed.stdout
