"""The Gradio Space: the real app on a local port, called with gradio_client and driven in headless Chromium.

The browser test runs the shipped default checkpoint (training/checkpoints/embedded) and asserts that its purified
panel looks like the clean one (PSNR >= 15 dB), and that its "Attacked, no defence" panel names the undefended
classifier training/checkpoints/embedded-undefended when that folder exists (the purifier's head otherwise).
CROPD_TEST_SPACE_MODEL=path/to/checkpoint runs it against another checkpoint instead (to check the test itself with a
stand-in); left unset, the app runs with its own default.
"""

import base64
import hashlib
import io
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from argparse import Namespace
from pathlib import Path

import gradio as gr
import huggingface_hub.constants
import numpy as np
import pytest
import torch
from conftest import tiny_cropd_config
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from huggingface_hub import metadata_save
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from transformers import pipeline

from cropd_hf import CRoPDForImageClassification, CRoPDImageProcessor

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "space_app"
import app as space  # noqa: E402  (space_app/ is put on the path by conftest.py, as `python app.py` would)
import model_loading  # noqa: E402

LABELS = {0: "zero", 1: "one", 2: "two"}
PURIFIER = "CRoPD purifier (faithful: g(x) looks like x)"
ROBUST_ENCODER = "Robust encoder (not a purifier: g(x) is a code for f, not an image of the digit)"
# The purified panel of a faithful purifier looks like the clean one, at the size the page shows both.
DISPLAYED_PSNR_FLOOR = 15.0
ARTIFACTS = Path(os.environ.get("CROPD_TEST_ARTIFACTS", REPO / "outputs" / "test-artifacts"))
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--window-size=1400,1000",
]


@pytest.fixture(autouse=True)
def hub_offline(monkeypatch):
    """The app's default models are Hub ids: in this process too, the Hub is offline (conftest.py sets
    HF_HUB_OFFLINE after huggingface_hub has read it), so loading one fails at once, with no network request."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def save_checkpoint(folder: Path, foundation: str, **overrides: object) -> Path:
    """A tiny CRoPD checkpoint (8x8 grayscale, 3 named classes), as tests/conftest.py's tiny_config builds one."""
    torch.manual_seed(0)
    config = tiny_cropd_config(
        foundation,
        id2label=LABELS,
        label2id={name: index for index, name in LABELS.items()},
        train_epsilon=0.1,
        **overrides,
    )
    CRoPDForImageClassification(config).save_pretrained(folder)
    CRoPDImageProcessor(size={"height": 8, "width": 8}, num_channels=1).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(foundation_folder, tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("space") / "checkpoint", foundation_folder)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_app(*args: str, **env: str) -> subprocess.Popen:
    # A CROPD_MODEL of the person running the tests does not reach the app: each test says which model it runs.
    inherited = {key: value for key, value in os.environ.items() if key != "CROPD_MODEL"}
    environment = {**inherited, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env}
    return subprocess.Popen(
        [sys.executable, str(SPACE / "app.py"), *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def serve(process: subprocess.Popen, port: int, timeout: float = 150):
    """The app's URL once it answers; the process is stopped when the module's tests are done."""
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(f"the app stopped: {process.stderr.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"the app did not serve within {timeout} s") from None
            time.sleep(0.25)
    yield url
    process.terminate()
    process.communicate(timeout=30)


@pytest.fixture(scope="module")
def server(checkpoint):
    """The real app, serving the tiny checkpoint (CROPD_MODEL) with a gallery of sklearn digits on a free port."""
    port = free_port()
    process = run_app("--port", str(port), "--examples", "sklearn-digits", CROPD_MODEL=str(checkpoint))
    yield from serve(process, port)


@pytest.fixture(scope="module")
def shipped_server():
    """The real app as it starts by default: the shipped checkpoints, the embedded MNIST examples."""
    port = free_port()
    stand_in = os.environ.get("CROPD_TEST_SPACE_MODEL")
    model = ["--model", stand_in, "--examples", "embedded-mnist"] if stand_in else []
    yield from serve(run_app("--port", str(port), *model), port)


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> str:
    """The gallery's first example, made by the app's own code."""
    path, caption = space.load_examples("sklearn-digits", tmp_path_factory.mktemp("examples"))[0]
    assert Path(path).name == "sklearn-digits-test-00.png" and caption.startswith("test #0: ")
    return path


def psnr_in_text(text: str) -> float:
    match = re.search(r"PSNR of the purified g\(x_adv\) against the clean x: \*{0,2}(-?[\d.]+|inf) dB", text)
    assert match, text
    return float(match.group(1))


@pytest.mark.slow
def test_the_client_gets_three_predictions_the_images_and_the_psnr_for_an_example(server, checkpoint, example):
    client = Client(server, verbose=False)
    # The model is the last input, with the picker's default: a client may leave it out.
    *images, psnr, clean, undefended, defended, status = client.predict(
        handle_file(example), "PGD-10", 0.1, api_name="/attack"
    )
    for path in images:
        with Image.open(path) as image:
            assert image.size == (space.DISPLAY_SIZE, space.DISPLAY_SIZE)
    for prediction in (clean, undefended, defended):
        assert prediction["label"] in LABELS.values()
        assert [entry["label"] for entry in prediction["confidences"]] != []
        assert {entry["label"] for entry in prediction["confidences"]} == set(LABELS.values())
    assert "**PGD**, ε = 0.1, α = 0.025, 10 steps, 1 restart" in status
    assert f"Model: {PURIFIER}, `{checkpoint}`" in status

    # The PSNR shown is the one of the pipeline's own arrays (native size, not the enlarged 8-bit panels).
    result = space.attack_image(model_loading.load_pipeline(str(checkpoint)), example, "PGD-10", 0.1)
    expected = space.psnr(result["images"]["input"], result["images"]["purified"])
    assert psnr_in_text(psnr) == pytest.approx(expected, abs=0.051)
    assert "at the native 8 x 8" in psnr

    # The same request naming the model explicitly, as the page sends it.
    *_, named_status = client.predict(handle_file(example), "FGSM", 0.1, str(checkpoint), api_name="/attack")
    assert "**FGSM**, ε = 0.1" in named_status


@pytest.mark.slow
def test_bad_requests_are_answered_and_the_app_keeps_serving(server, example, tmp_path):
    client = Client(server, verbose=False)
    (tmp_path / "notes.png").write_text("not an image")  # an image's name, not an image's content
    (tmp_path / "notes.txt").write_text("not an image")
    Image.fromarray(np.zeros((1, 4097), np.uint8)).save(tmp_path / "wide.png")
    refused = [
        ((tmp_path / "notes.png", "PGD-10", 0.1), "'notes.png' is not an image, whatever its extension; accepted: "),
        ((tmp_path / "notes.txt", "PGD-10", 0.1), "Please upload a file that is one of these formats: ['image']"),
        ((tmp_path / "wide.png", "PGD-10", 0.1), "too large (4097 x 1 pixels)"),
        ((example, "PGD-10", 0.5), "ε must be a number in [0.0, 0.3]; got 0.5."),
        # The page's slider cannot send a string; the API can, and gets the app's own message.
        ((example, "PGD-10", "abc"), "ε must be a number in [0.0, 0.3]; got 'abc'."),
        ((example, "BIM", 0.1), "BIM"),
    ]
    for (path, attack, epsilon), message in refused:
        with pytest.raises(AppError) as caught:
            client.predict(handle_file(str(path)), attack, epsilon, api_name="/attack")
        assert message in str(caught.value)
    assert "an image file (PNG, JPEG" in space.ACCEPTED_IMAGES
    with pytest.raises(AppError, match="is not in the list of choices"):
        client.predict(handle_file(example), "FGSM", 0.1, "some/other-model", api_name="/attack")

    # An upload larger than max_file_size is refused before the app sees it.
    (tmp_path / "large.png").write_bytes(bytes(6 * 1024 * 1024))
    with pytest.raises(ValueError, match="exceeds the maximum file size of 5242880 bytes"):
        client.predict(handle_file(str(tmp_path / "large.png")), "FGSM", 0.1, api_name="/attack")

    # An RGB image for this grayscale model is converted, and the app still answers.
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(tmp_path / "rgb.png")
    for path in (tmp_path / "rgb.png", example):
        *_, clean, undefended, defended, status = client.predict(
            handle_file(str(path)), "FGSM", 0.05, api_name="/attack"
        )
        assert all(prediction["label"] in LABELS.values() for prediction in (clean, undefended, defended))
        assert "**FGSM**, ε = 0.05" in status


def chromium() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-profile-')}")
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def panel_image(browser: webdriver.Chrome, server: str, panel: str) -> Image.Image:
    """The image a panel shows, as the page got it: its <img> src, fetched from the same server (or a data: URL)."""
    source = browser.find_element(By.CSS_SELECTOR, f"#{panel} img").get_attribute("src")
    if source.startswith("data:"):
        data = base64.b64decode(source.split(",", 1)[1])
    else:
        assert source.startswith(server), source  # the app's own file route, nothing from elsewhere
        with urllib.request.urlopen(source, timeout=10) as response:
            data = response.read()
    return Image.open(io.BytesIO(data)).convert("L")


def displayed_psnr(clean: Image.Image, purified: Image.Image) -> float:
    """PSNR in dB of the purified panel against the clean one, grayscale, at the clean panel's size."""
    reference = np.asarray(clean, np.float64) / 255
    shown = np.asarray(purified.resize(clean.size, Image.Resampling.NEAREST), np.float64) / 255
    mse = float(np.mean((reference - shown) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


@pytest.mark.slow
@pytest.mark.browser
def test_the_page_attacks_an_example_of_the_shipped_checkpoint_in_headless_chromium(shipped_server):
    browser = chromium()
    try:
        browser.get(shipped_server)
        wait = WebDriverWait(browser, 60)
        picker = wait.until(lambda page: page.find_element(By.ID, "model"))
        assert PURIFIER in picker.text  # the default checkpoint, described as what it is
        wait.until(lambda page: page.find_element(By.CSS_SELECTOR, "#examples button.thumbnail-item")).click()
        wait.until(lambda page: "embedded-mnist-test-00" in page.find_element(By.ID, "image").text)
        browser.find_element(By.ID, "run").click()
        panels = ("clean-label", "undefended-label", "defended-label")
        wait.until(lambda page: all(filled(page, panel) for panel in panels))
        for panel in panels:
            assert set(browser.find_element(By.ID, panel).text.split()) & set("0123456789"), panel
        for name in ("clean-image", "adversarial-image", "perturbation-image", "purified-image"):
            assert browser.find_elements(By.CSS_SELECTOR, f"#{name} img"), name
        page = browser.find_element(By.TAG_NAME, "body").text
        for title in (
            "Clean x",
            "Adversarial x_adv (made against h(f(g(x))))",
            "Perturbation x_adv − x",
            "Purified g(x_adv)",
            "Clean: h(f(g(x)))",
            "Attacked, with the purifier: h(f(g(x_adv)))",
        ):
            assert title in page, title
        status = browser.find_element(By.ID, "status").text
        assert "10 steps" in status
        # The chain without defence: the shipped undefended classifier when it exists (always with the shipped
        # default; a stand-in model may not match it), else the purifier's own head, each said as what it is.
        separate = "Undefended classifier h'(f(x))" in status
        if model_loading.UNDEFENDED_CHECKPOINT.is_dir() and not os.environ.get("CROPD_TEST_SPACE_MODEL"):
            assert separate, status
        if separate:
            assert space.UNDEFENDED_MODEL_TITLE in page
            # The page's text breaks lines around the folder name: any white space there.
            assert re.search(r"Undefended classifier h'\(f\(x\)\),\s*\S+\s*: clean → \S+, attacked → \S+\.", status)
        else:
            assert space.head_without_g_title("purifier") in page
            assert "not a real undefended classifier" in status
        shown_psnr = psnr_in_text(browser.find_element(By.ID, "purified-psnr").text)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        screenshot = ARTIFACTS / "space_app.png"
        assert browser.save_screenshot(str(screenshot))
        assert screenshot.stat().st_size > 10_000

        clean = panel_image(browser, shipped_server, "clean-image")
        purified = panel_image(browser, shipped_server, "purified-image")
    finally:
        browser.quit()
    assert clean.size == (space.DISPLAY_SIZE, space.DISPLAY_SIZE)
    psnr = displayed_psnr(clean, purified)
    assert psnr >= DISPLAYED_PSNR_FLOOR, (
        f"the purified panel does not look like the clean one: PSNR {psnr:.1f} dB on the page (the app says "
        f"{shown_psnr:.1f} dB at native size), under {DISPLAYED_PSNR_FLOOR} dB: the default checkpoint is not a "
        "faithful purifier"
    )


def filled(page: webdriver.Chrome, panel: str) -> bool:
    return bool(page.find_element(By.ID, panel).find_elements(By.CSS_SELECTOR, "[data-testid='label-output-value']"))


def copy_checkpoint(checkpoint: Path, folder: Path, tags: list[str] | None) -> Path:
    """A copy of `checkpoint` at `folder`, with a model card carrying `tags` (no card with None)."""
    shutil.copytree(checkpoint, folder)
    if tags is not None:
        (folder / "README.md").write_text("# A CRoPD checkpoint\n")
        metadata_save(folder / "README.md", {"library_name": "transformers", "tags": tags})
    return folder


def shipped(monkeypatch, *folders: Path, undefended: Path | None = None) -> None:
    """Make `folders` the checkpoints the app ships (the first the default), with made-up Hub ids; and `undefended`
    its undefended classifier (None: a folder that does not exist, whatever the repository holds)."""
    entries = tuple(
        model_loading.ShippedCheckpoint(folder, f"cropd-test/{folder.name}-not-published") for folder in folders
    )
    monkeypatch.setattr(model_loading, "SHIPPED", entries)
    absent = folders[0].parent / "embedded-undefended-absent"
    monkeypatch.setattr(model_loading, "UNDEFENDED_CHECKPOINT", absent if undefended is None else undefended)
    monkeypatch.setattr(model_loading, "UNDEFENDED_HUB_ID", "cropd-test/embedded-undefended-not-published")


def picker_choices(demo: gr.Blocks) -> list[tuple[str, str]]:
    (picker,) = [block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "model"]
    return [tuple(choice) for choice in picker.choices]


def test_the_picker_offers_both_kinds_by_their_model_card_not_their_name(checkpoint, tmp_path, monkeypatch, example):
    root = tmp_path / "checkpoints"
    purifier = copy_checkpoint(checkpoint, root / "embedded", ["cropd", "purification"])
    encoder = copy_checkpoint(checkpoint, root / "embedded-robust-encoder", ["cropd", "robust-encoder"])
    shipped(monkeypatch, purifier, encoder)
    examples = [(example, "digit")]

    models, _ = space.start(Namespace(model=None, examples=str(Path(example).parent)), tmp_path)
    assert [(model.name, model.kind) for model in models] == [
        (str(purifier), "purifier"),
        (str(encoder), "robust-encoder"),
    ]
    demo = space.build_demo(models, examples)
    assert picker_choices(demo) == [
        (f"{PURIFIER} — {purifier}", str(purifier)),
        (f"{ROBUST_ENCODER} — {encoder}", str(encoder)),
    ]
    assert demo.delete_cache == space.DELETE_CACHE

    # Each request runs the model picked, and says plainly what the robust encoder's "purified" image is.
    *_, psnr, _, _, _, status = space.respond(models[1], example, "FGSM", 0.1)
    assert "not meant to look like the digit" in psnr
    assert "not meant to look like the digit" in space.titles("robust-encoder")["purified"]
    assert space.titles("purifier")["purified"] == "Purified g(x_adv)"
    assert f"Model: {ROBUST_ENCODER}" in status

    # --model naming a shipped checkpoint makes it the default; the other is still offered.
    models, _ = space.load_models(str(encoder))
    assert [model.kind for model in models] == ["robust-encoder", "purifier"]

    # The kind comes from the card: a folder named like a robust encoder without the tag is a purifier, and a
    # checkpoint without a card too. Without the second folder there is one choice.
    untagged = copy_checkpoint(checkpoint, tmp_path / "other" / "embedded-robust-encoder", None)
    tagged = copy_checkpoint(checkpoint, tmp_path / "other" / "plain-name", ["robust-encoder"])
    shipped(monkeypatch, purifier, untagged, tmp_path / "missing")
    models, _ = space.load_models(None)
    assert [model.kind for model in models] == ["purifier", "purifier"]
    models, _ = space.load_models(str(tagged))
    assert [(model.name, model.kind) for model in models] == [(str(tagged), "robust-encoder")]
    assert picker_choices(space.build_demo(models, [])) == [(f"{ROBUST_ENCODER} — {tagged}", str(tagged))]


def label_titles(demo: gr.Blocks) -> dict[str, str]:
    return {
        block.elem_id: block.label
        for block in demo.blocks.values()
        if getattr(block, "elem_id", None) in ("clean-label", "undefended-label", "defended-label")
    }


def pixels_of(example: str) -> torch.Tensor:
    return CRoPDImageProcessor(size={"height": 8, "width": 8}, num_channels=1)(
        images=Image.open(example), return_tensors="pt"
    )["pixel_values"]


def test_the_undefended_classifier_is_every_purifier_s_chain_without_defence(
    checkpoint, foundation_folder, tmp_path, monkeypatch, example
):
    root = tmp_path / "checkpoints"
    purifier = copy_checkpoint(checkpoint, root / "embedded", ["cropd", "purification"])
    encoder = copy_checkpoint(checkpoint, root / "embedded-robust-encoder", ["cropd", "robust-encoder"])
    undefended_checkpoint = save_checkpoint(tmp_path / "made" / "undefended", foundation_folder, use_purifier=False)
    undefended = copy_checkpoint(undefended_checkpoint, root / "embedded-undefended", ["cropd", "undefended"])
    shipped(monkeypatch, purifier, encoder, undefended=undefended)
    loads = []

    def counted(model: str):
        loads.append(model)
        return model_loading.load_undefended(model)

    monkeypatch.setattr(space, "load_undefended", counted)
    models, _ = space.start(Namespace(model=None, examples=str(Path(example).parent)), tmp_path)

    # Tried on the (offline) Hub, then loaded once from its folder, shared by both models with a g; never a choice of
    # the picker.
    assert loads == ["cropd-test/embedded-undefended-not-published", str(undefended)]
    assert [(model.name, model.kind, model.undefended) for model in models] == [
        (str(purifier), "purifier", str(undefended)),
        (str(encoder), "robust-encoder", str(undefended)),
    ]
    classifier = models[0].robust.undefended_model
    assert classifier is models[1].robust.undefended_model and classifier.config.use_purifier is False
    demo = space.build_demo(models, [(example, "digit")])
    assert [name for _, name in picker_choices(demo)] == [str(purifier), str(encoder)]
    assert label_titles(demo)["undefended-label"] == space.UNDEFENDED_MODEL_TITLE
    assert "the undefended classifier: a head trained on clean images" in space.UNDEFENDED_MODEL_TITLE
    assert space.model_titles(models[1])["undefended"] == space.UNDEFENDED_MODEL_TITLE

    # The "no defence" panel and the status are those of h'(f(x)), the undefended classifier, attacked on its own.
    result = space.attack_image(models[0].robust, example, "FGSM", 0.1)
    assert result["undefended_chain"] == "separate undefended model"
    x = pixels_of(example)
    with torch.no_grad():
        own = classifier(x).logits[0].softmax(-1)
        head = models[0].robust.model(x, purify=False).logits[0].softmax(-1)
    expected = {LABELS[index]: score for index, score in enumerate(own.tolist())}
    assert {e["label"]: e["score"] for e in result["clean_without_purifier"]} == pytest.approx(expected, abs=1e-5)
    assert not torch.allclose(own, head)  # a classifier of its own, not the purifier's head
    *_, undefended_label, _, status = space.respond(models[0], example, "FGSM", 0.1)
    assert undefended_label == space.confidences(result["attacked_without_purifier"])
    clean, attacked = result["clean_without_purifier"][0]["label"], result["attacked_without_purifier"][0]["label"]
    assert f"Undefended classifier h'(f(x)), `{undefended}`: clean → **{clean}**, attacked → **{attacked}**." in status

    # Named with --model, the undefended checkpoint is what its card says, not a purifier; it has no other chain.
    (alone,) = space.load_models(str(undefended))[0]
    assert (alone.kind, alone.undefended) == ("undefended", None)
    assert alone.description == model_loading.DESCRIPTIONS["undefended"] and "purifier (" not in alone.choice
    *_, defended, alone_status = space.respond(alone, example, "FGSM", 0.1)
    assert defended == "no purifier: this model is the undefended classifier"
    assert "No defence (this model itself, it has no purifier)" in alone_status


def test_without_the_undefended_classifier_the_page_says_the_chain_is_the_purifier_s_head(
    checkpoint, foundation_folder, tmp_path, monkeypatch, example, capsys
):
    root = tmp_path / "checkpoints"
    purifier = copy_checkpoint(checkpoint, root / "embedded", ["cropd"])
    encoder = copy_checkpoint(checkpoint, root / "embedded-robust-encoder", ["robust-encoder"])
    shipped(monkeypatch, purifier, encoder)  # no embedded-undefended folder
    models, _ = space.load_models(None)
    assert [model.undefended for model in models] == [None, None]
    assert getattr(models[0].robust, "undefended_model", None) is None
    assert label_titles(space.build_demo(models, []))["undefended-label"] == space.head_without_g_title("purifier")
    for model, g in zip(models, ("purifier", "robust encoder"), strict=True):
        title = space.model_titles(model)["undefended"]
        assert title == space.head_without_g_title(g) and "not a real undefended classifier" in title
        *_, status = space.respond(model, example, "FGSM", 0.1)
        assert f"No defence: the head without the {g}, h(f(x)) (trained on f(g(x)), not a real undefended" in status
        assert space.attack_image(model.robust, example, "FGSM", 0.1)["undefended_chain"] == (
            "the purifier's head without the purifier"
        )

    # An undefended classifier that does not match the model (another image size) is not used, and said so.
    mismatched = save_checkpoint(tmp_path / "other-size", foundation_folder, use_purifier=False, image_size=12)
    shipped(monkeypatch, purifier, undefended=mismatched)
    capsys.readouterr()
    (model,) = space.load_models(None)[0]
    assert model.undefended is None and model.robust.undefended_model is None
    warning = capsys.readouterr().err
    assert f"warning: the undefended classifier {mismatched} is not used with {purifier}" in warning
    assert "undefended_model has image_size=12 but the model has 8" in warning


def test_a_hub_id_of_a_shipped_checkpoint_falls_back_to_its_folder(checkpoint, tmp_path, monkeypatch, capsys):
    purifier = copy_checkpoint(checkpoint, tmp_path / "embedded", ["cropd"])
    encoder = copy_checkpoint(checkpoint, tmp_path / "embedded-robust-encoder", ["robust-encoder"])
    shipped(monkeypatch, purifier, encoder)
    loaded = []

    def not_published(load):  # the Hub answers, but has no such repository
        def fake(model: str):
            loaded.append(model)
            if model.startswith("cropd-test/"):
                raise OSError(f"{model} is not a local folder and is not a valid model identifier on the Hub")
            return load(model)

        return fake

    monkeypatch.setattr(space, "load_pipeline", not_published(model_loading.load_pipeline))
    monkeypatch.setattr(space, "load_undefended", not_published(model_loading.load_undefended))
    models, shipped_ones = space.load_models("cropd-test/embedded-robust-encoder-not-published")
    assert shipped_ones
    assert loaded == [
        "cropd-test/embedded-undefended-not-published",
        "cropd-test/embedded-robust-encoder-not-published",
        str(encoder),
        "cropd-test/embedded-not-published",
        str(purifier),
    ]
    assert [(model.name, model.kind) for model in models] == [
        (str(encoder), "robust-encoder"),
        (str(purifier), "purifier"),
    ]
    assert f"warning: loaded {encoder} instead of cropd-test/embedded-robust-encoder-not-published: OSError" in (
        capsys.readouterr().err
    )


def publish(repo_id: str, folder: Path, cache: Path) -> None:
    """Put `folder` in the Hub cache `cache` as a download of `repo_id` would leave it: the Hub, without a network."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_the_default_models_come_from_the_hub_else_from_their_folders(
    checkpoint, foundation_folder, tmp_path, monkeypatch, capsys, example
):
    root = tmp_path / "checkpoints"
    purifier = copy_checkpoint(checkpoint, root / "embedded", ["cropd"])
    encoder = copy_checkpoint(checkpoint, root / "embedded-robust-encoder", ["cropd", "robust-encoder"])
    undefended = save_checkpoint(tmp_path / "undefended", foundation_folder, use_purifier=False)
    entries = (
        model_loading.ShippedCheckpoint(purifier, "cropd-test/embedded"),
        model_loading.ShippedCheckpoint(encoder, "cropd-test/embedded-robust-encoder"),
    )
    monkeypatch.setattr(model_loading, "SHIPPED", entries)
    monkeypatch.setattr(model_loading, "UNDEFENDED_HUB_ID", "cropd-test/embedded-undefended")
    monkeypatch.setattr(model_loading, "UNDEFENDED_CHECKPOINT", root / "embedded-undefended")  # no such folder
    # The purifier as train.py writes it, its foundation model inside (`./foundation`): on the Hub, a subfolder.
    hub_purifier = copy_checkpoint(checkpoint, tmp_path / "hub" / "embedded", ["cropd"])
    shutil.copytree(foundation_folder, hub_purifier / "foundation")
    config = json.loads((hub_purifier / "config.json").read_text())
    (hub_purifier / "config.json").write_text(json.dumps({**config, "foundation_model_name_or_path": "./foundation"}))
    cache = tmp_path / "hub-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    # The Hub serves all three: the page runs them, by their Hub ids, each kind read from its card on the Hub.
    publish("cropd-test/embedded", hub_purifier, cache)
    publish("cropd-test/embedded-robust-encoder", encoder, cache)
    hub_undefended = copy_checkpoint(undefended, tmp_path / "hub" / "embedded-undefended", ["undefended"])
    publish("cropd-test/embedded-undefended", hub_undefended, cache)
    capsys.readouterr()
    models, shipped_ones = space.load_models(None)
    assert shipped_ones
    assert [(model.name, model.kind, model.undefended) for model in models] == [
        ("cropd-test/embedded", "purifier", "cropd-test/embedded-undefended"),
        ("cropd-test/embedded-robust-encoder", "robust-encoder", "cropd-test/embedded-undefended"),
    ]
    log = capsys.readouterr().err
    assert "model: cropd-test/embedded (from the Hub)" in log and "warning" not in log
    assert "undefended classifier: cropd-test/embedded-undefended (from the Hub)" in log
    from_hub = models[0].robust.model
    assert from_hub.foundation_location() == "cropd-test/embedded"  # f from the repository's ./foundation
    x = pixels_of(example)
    with torch.no_grad():
        expected = CRoPDForImageClassification.from_pretrained(purifier)(x).logits
        torch.testing.assert_close(from_hub(x).logits, expected)

    # The Hub unreachable (an empty cache, offline): one Hub request fails, the other Hub ids are not even tried,
    # and every model comes from its folder, said on stderr.
    shutil.rmtree(cache)
    tried = []

    def spied(load):
        def spy(model: str):
            tried.append(model)
            return load(model)

        return spy

    monkeypatch.setattr(space, "load_pipeline", spied(model_loading.load_pipeline))
    monkeypatch.setattr(space, "load_undefended", spied(model_loading.load_undefended))
    models, _ = space.load_models(None)
    assert tried == ["cropd-test/embedded-undefended", str(purifier), str(encoder)]
    assert [(model.name, model.kind, model.undefended) for model in models] == [
        (str(purifier), "purifier", None),
        (str(encoder), "robust-encoder", None),
    ]
    log = capsys.readouterr().err
    assert f"warning: loaded {purifier} instead of cropd-test/embedded: not tried: the Hub could not be reached" in log
    assert f"model: {purifier} (local folder)" in log


@pytest.mark.slow
def test_an_unloadable_model_stops_the_app_with_a_clear_message():
    process = run_app("--model", "/nonexistent/cropd-checkpoint", "--port", str(free_port()))
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2
    assert "error: Cannot load the CRoPD model '/nonexistent/cropd-checkpoint' (CROPD_MODEL / --model)" in stderr


def test_a_missing_embedded_checkpoint_says_how_to_make_it(tmp_path, monkeypatch):
    missing = tmp_path / "training" / "checkpoints" / "embedded"
    shipped(monkeypatch, missing, tmp_path / "training" / "checkpoints" / "embedded-robust-encoder")
    for model in (None, str(missing)):
        with pytest.raises(space.StartupError, match="accelerate launch training/train.py"):
            space.start(Namespace(model=model, examples=None), tmp_path)


def test_requests_are_checked_in_the_app_too(checkpoint, example, tmp_path):
    robust = model_loading.load_pipeline(str(checkpoint))
    (tmp_path / "digit.png").write_bytes(b"%PDF-1.4 not an image")
    for image, attack, epsilon, message in (
        (None, "PGD-10", 0.1, "Pick an example or upload an image first."),
        (example, "BIM", 0.1, "Unknown attack 'BIM'"),
        (example, "FGSM", float("nan"), "ε must be a number in [0.0, 0.3]; got nan."),
        (example, "FGSM", 0.31, "ε must be a number in [0.0, 0.3]; got 0.31."),
        (example, "FGSM", True, "ε must be a number in [0.0, 0.3]; got True."),
        (example, "FGSM", "abc", "ε must be a number in [0.0, 0.3]; got 'abc'."),
        (str(tmp_path / "digit.png"), "FGSM", 0.1, "'digit.png' is not an image, whatever its extension; accepted: "),
        (str(tmp_path / "gone.png"), "FGSM", 0.1, "No file 'gone.png'"),
    ):
        with pytest.raises(gr.Error, match=re.escape(message)):
            space.attack_image(robust, image, attack, epsilon)


def test_the_psnr_is_ten_log10_of_one_over_the_mse_at_native_size():
    clean = np.zeros((2, 2, 1), np.float32)
    assert space.psnr(clean, clean + 0.1) == pytest.approx(20.0)
    assert space.psnr(clean, clean) == math.inf
    images = {"input": clean, "purified": clean + 0.01}
    assert "**40.0 dB**" in space.describe_purified("purifier", images)
    assert "at the native 2 x 2" in space.describe_purified("purifier", images)
    assert "not meant to look like the digit" not in space.describe_purified("purifier", images)
    assert "not meant to look like the digit" in space.describe_purified("robust-encoder", images)
    assert "No purifier" in space.describe_purified("identity", {"input": clean, "purified": None})


def test_the_identity_baseline_is_shown_as_having_no_purifier(foundation_folder, tmp_path, example):
    checkpoint = save_checkpoint(tmp_path / "identity", foundation_folder, use_purifier=False)
    robust = model_loading.load_pipeline(str(checkpoint))
    model = space.Model(str(checkpoint), robust, model_loading.checkpoint_kind(robust, str(checkpoint)))
    assert model.kind == "identity"
    clean, adversarial, perturbation, purified, psnr, *labels, status = space.respond(model, example, "PGD-10", 0.1)
    assert purified is None
    assert all(image.size == (space.DISPLAY_SIZE, space.DISPLAY_SIZE) for image in (clean, adversarial, perturbation))
    assert psnr == "No purifier: there is no g(x_adv) to compare with the clean x."
    title = space.titles(model.kind)
    assert title["clean"] == "Clean: h(f(x))"
    assert title["adversarial"] == "Adversarial x_adv (made against h(f(x)): this model has no purifier)"
    assert labels[2] == "no purifier: this model is the Identity baseline"
    assert set(labels[0]) == set(labels[1]) == set(LABELS.values())
    assert "Model: no purifier (Identity baseline)" in status


def test_the_perturbation_is_stretched_from_plus_minus_epsilon_to_the_gray_range():
    perturbation = np.array([[-0.1, 0.0, 0.1]], np.float32)[..., None]
    shown = np.asarray(space.amplified(perturbation, 0.1))
    assert shown.shape == (space.DISPLAY_SIZE, space.DISPLAY_SIZE)
    assert {shown[0, 0], shown[0, space.DISPLAY_SIZE // 2], shown[0, -1]} == {0, 128, 255}
    assert set(np.unique(np.asarray(space.amplified(perturbation * 0, 0.0)))) == {128}


def test_examples_come_from_a_folder_of_images(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    Image.new("L", (4, 4)).save(folder / "b-seven.png")
    Image.new("RGB", (4, 4)).save(folder / "a-two.JPG", format="JPEG")
    (folder / "notes.txt").write_text("not an example")
    assert space.load_examples(str(folder), tmp_path) == [
        (str(folder / "a-two.JPG"), "a-two"),
        (str(folder / "b-seven.png"), "b-seven"),
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(space.StartupError, match="holds no image"):
        space.load_examples(str(tmp_path / "empty"), tmp_path)
    with pytest.raises(space.StartupError, match="nor one of the datasets"):
        space.load_examples("no-such-dataset", tmp_path)
    with pytest.raises(space.StartupError, match="Cannot load the examples 'cifar10'"):
        space.load_examples("cifar10", tmp_path)  # a Hub dataset, offline


WITHOUT_PACKAGE = textwrap.dedent(
    """
    import json
    import sys

    sys.modules["cropd_hf"] = None  # a Space holding only space_app/: the package is not installed
    checkpoint, undefended, examples = sys.argv[1:]  # space_app/ is on PYTHONPATH, as for `python app.py`
    import app
    from model_loading import load_pipeline, load_undefended, with_undefended

    robust = load_pipeline(checkpoint)
    separate = with_undefended(robust, load_undefended(undefended))
    gallery = app.load_examples(examples, app.Path(examples))
    try:
        app.load_examples("sklearn-digits", app.Path(examples))
    except app.StartupError as error:
        refused = str(error)
    result = app.attack_image(robust, gallery[0][0], "PGD-10", 0.1)
    chains = [app.attack_image(pipe, gallery[0][0], "FGSM", 0.1)["undefended_chain"] for pipe in (robust, separate)]
    print(json.dumps({
        "pipeline": type(robust).__module__,
        "undefended": type(separate.undefended_model).__module__,
        "chains": chains,
        "gallery": [caption for _, caption in gallery],
        "refused": refused,
        "defended": result["attacked_with_purifier"],
    }))
    """
)


@pytest.mark.slow
def test_without_the_package_the_space_runs_the_checkpoints_own_code(checkpoint, foundation_folder, example, tmp_path):
    declared = tmp_path / "declared"
    pipeline("robust-image-classification", model=str(checkpoint)).save_pretrained(declared)
    undefended = save_checkpoint(tmp_path / "undefended", foundation_folder, use_purifier=False)
    examples = tmp_path / "examples"
    examples.mkdir()
    shutil.copy(example, examples / "digit.png")
    (tmp_path / "script.py").write_text(WITHOUT_PACKAGE)
    completed = subprocess.run(
        [sys.executable, str(tmp_path / "script.py"), str(declared), str(undefended), str(examples)],
        env={
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "HF_MODULES_CACHE": str(tmp_path / "modules"),
            "PYTHONPATH": str(SPACE),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["pipeline"].startswith("transformers_modules.")
    assert report["undefended"].startswith("transformers_modules.")
    assert report["chains"] == ["the purifier's head without the purifier", "separate undefended model"]
    assert report["gallery"] == ["digit"]
    assert "datasets need the cropd_hf package" in report["refused"]
    assert {entry["label"] for entry in report["defended"]} == set(LABELS.values())
