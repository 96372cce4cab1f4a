"""The Gradio Space: the real app on a local port, called with gradio_client and driven in headless Chromium."""

import json
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
import numpy as np
import pytest
import torch
from conftest import tiny_cropd_config
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from transformers import pipeline

from cropd_hf import CRoPDForImageClassification, CRoPDImageProcessor

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "space_app"
sys.path.insert(0, str(SPACE))
import app as space  # noqa: E402
import model_loading  # noqa: E402

LABELS = {0: "zero", 1: "one", 2: "two"}
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
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env}
    return subprocess.Popen(
        [sys.executable, str(SPACE / "app.py"), *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    """The real app, serving the tiny checkpoint (CROPD_MODEL) with a gallery of sklearn digits on a free port."""
    port = free_port()
    process = run_app("--port", str(port), "--examples", "sklearn-digits", CROPD_MODEL=str(checkpoint))
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
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
                raise AssertionError("the app did not serve within 120 s") from None
            time.sleep(0.25)
    yield url
    process.terminate()
    process.communicate(timeout=30)


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> str:
    """The gallery's first example, made by the app's own code."""
    path, caption = space.load_examples("sklearn-digits", tmp_path_factory.mktemp("examples"))[0]
    assert Path(path).name == "sklearn-digits-test-00.png" and caption.startswith("test #0: ")
    return path


def test_the_client_gets_three_predictions_and_the_images_for_an_example(server, example):
    client = Client(server, verbose=False)
    *images, clean, undefended, defended, status = client.predict(
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
    assert "Model: CRoPD purifier" in status


def test_bad_requests_are_answered_and_the_app_keeps_serving(server, example, tmp_path):
    client = Client(server, verbose=False)
    (tmp_path / "notes.png").write_text("not an image")
    Image.fromarray(np.zeros((1, 4097), np.uint8)).save(tmp_path / "wide.png")
    refused = [
        ((tmp_path / "notes.png", "PGD-10", 0.1), "'notes.png' is not an image file that PIL can read."),
        ((tmp_path / "wide.png", "PGD-10", 0.1), "too large (4097 x 1 pixels)"),
        ((example, "PGD-10", 0.5), "0.5"),
        ((example, "BIM", 0.1), "BIM"),
    ]
    for (path, attack, epsilon), message in refused:
        with pytest.raises(AppError) as caught:
            client.predict(handle_file(str(path)), attack, epsilon, api_name="/attack")
        assert message in str(caught.value)

    # An RGB image for this grayscale model is converted, and the app still answers.
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(tmp_path / "rgb.png")
    for path in (tmp_path / "rgb.png", example):
        *_, clean, undefended, defended, status = client.predict(
            handle_file(str(path)), "FGSM", 0.05, api_name="/attack"
        )
        assert all(prediction["label"] in LABELS.values() for prediction in (clean, undefended, defended))
        assert "**FGSM**, ε = 0.05" in status


def test_the_page_attacks_an_example_in_headless_chromium(server):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory() as profile:
        options.add_argument(f"--user-data-dir={profile}")
        browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            browser.get(server)
            wait = WebDriverWait(browser, 60)
            wait.until(lambda page: page.find_element(By.CSS_SELECTOR, "#examples button.thumbnail-item")).click()
            wait.until(lambda page: "sklearn-digits-test-00" in page.find_element(By.ID, "image").text)
            browser.find_element(By.ID, "run").click()
            panels = ("clean-label", "undefended-label", "defended-label")
            wait.until(lambda page: all(filled(page, panel) for panel in panels))
            for panel in panels:
                assert set(browser.find_element(By.ID, panel).text.split()) & set(LABELS.values()), panel
            for name in ("clean-image", "adversarial-image", "perturbation-image", "purified-image"):
                assert browser.find_elements(By.CSS_SELECTOR, f"#{name} img"), name
            assert "10 steps" in browser.find_element(By.ID, "status").text
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            screenshot = ARTIFACTS / "space_app.png"
            assert browser.save_screenshot(str(screenshot))
            assert screenshot.stat().st_size > 10_000
        finally:
            browser.quit()


def filled(page: webdriver.Chrome, panel: str) -> bool:
    return bool(page.find_element(By.ID, panel).find_elements(By.CSS_SELECTOR, "[data-testid='label-output-value']"))


def test_an_unloadable_model_stops_the_app_with_a_clear_message():
    process = run_app("--model", "/nonexistent/cropd-checkpoint", "--port", str(free_port()))
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2
    assert "error: Cannot load the CRoPD model '/nonexistent/cropd-checkpoint' (CROPD_MODEL / --model)" in stderr


def test_a_missing_embedded_checkpoint_says_how_to_make_it(tmp_path, monkeypatch):
    missing = tmp_path / "training" / "checkpoints" / "embedded"
    monkeypatch.setattr(model_loading, "EMBEDDED_CHECKPOINT", missing)
    monkeypatch.setattr(space, "EMBEDDED_CHECKPOINT", missing)
    with pytest.raises(space.StartupError, match="accelerate launch training/train.py"):
        space.start(Namespace(model=str(missing), examples=None), tmp_path)


def test_requests_are_checked_in_the_app_too(checkpoint, example):
    robust = model_loading.load_pipeline(str(checkpoint))
    for image, attack, epsilon, message in (
        (None, "PGD-10", 0.1, "Pick an example or upload an image first."),
        (example, "BIM", 0.1, "Unknown attack 'BIM'"),
        (example, "FGSM", float("nan"), "ε must be a number in [0.0, 0.3]; got nan."),
        (example, "FGSM", 0.31, "ε must be a number in [0.0, 0.3]; got 0.31."),
        (example, "FGSM", True, "ε must be a number in [0.0, 0.3]; got True."),
    ):
        with pytest.raises(gr.Error, match=re.escape(message)):
            space.attack_image(robust, image, attack, epsilon)


def test_the_identity_baseline_is_shown_as_having_no_purifier(foundation_folder, tmp_path, example):
    checkpoint = save_checkpoint(tmp_path / "identity", foundation_folder, use_purifier=False)
    robust = model_loading.load_pipeline(str(checkpoint))
    clean, adversarial, perturbation, purified, *labels, status = space.respond(robust, example, "PGD-10", 0.1)
    assert purified is None
    assert all(image.size == (space.DISPLAY_SIZE, space.DISPLAY_SIZE) for image in (clean, adversarial, perturbation))
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
    space_app, checkpoint, examples = sys.argv[1:]
    sys.path.insert(0, space_app)
    import app
    from model_loading import load_pipeline

    robust = load_pipeline(checkpoint)
    gallery = app.load_examples(examples, app.Path(examples))
    try:
        app.load_examples("sklearn-digits", app.Path(examples))
    except app.StartupError as error:
        refused = str(error)
    result = app.attack_image(robust, gallery[0][0], "PGD-10", 0.1)
    print(json.dumps({
        "pipeline": type(robust).__module__,
        "gallery": [caption for _, caption in gallery],
        "refused": refused,
        "defended": result["attacked_with_purifier"],
    }))
    """
)


def test_without_the_package_the_space_runs_the_checkpoints_own_code(checkpoint, example, tmp_path):
    declared = tmp_path / "declared"
    pipeline("robust-image-classification", model=str(checkpoint)).save_pretrained(declared)
    examples = tmp_path / "examples"
    examples.mkdir()
    shutil.copy(example, examples / "digit.png")
    (tmp_path / "script.py").write_text(WITHOUT_PACKAGE)
    completed = subprocess.run(
        [sys.executable, str(tmp_path / "script.py"), str(SPACE), str(declared), str(examples)],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["pipeline"].startswith("transformers_modules.")
    assert report["gallery"] == ["digit"]
    assert "datasets need the cropd_hf package" in report["refused"]
    assert {entry["label"] for entry in report["defended"]} == set(LABELS.values())
