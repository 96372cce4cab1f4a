"""The Gradio Space served for real: the app on a local port, called with gradio_client and driven in headless
Chromium, and started without the cropd_hf package.

The browser test runs the shipped default checkpoint (training/checkpoints/embedded) and asserts that its purified
panel looks like the clean one (PSNR >= 15 dB), and that its "Attacked, no defence" panel names the undefended
classifier training/checkpoints/embedded-undefended when that folder exists (the purifier's head otherwise).
CROPD_TEST_SPACE_MODEL=path/to/checkpoint runs it against another checkpoint instead (to check the test itself with a
stand-in); left unset, the app runs with its own default.
"""

import base64
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
import time
import urllib.request
from pathlib import Path

import app as space
import model_loading
import numpy as np
import pytest
from conftest import run_without_cropd_hf
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from space_testing import LABELS, PURIFIER, REPO, SPACE, save_checkpoint
from transformers import pipeline

pytestmark = pytest.mark.usefixtures("hub_offline")
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


@pytest.mark.slow
def test_an_unloadable_model_stops_the_app_with_a_clear_message():
    process = run_app("--model", "/nonexistent/cropd-checkpoint", "--port", str(free_port()))
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2
    assert "error: Cannot load the CRoPD model '/nonexistent/cropd-checkpoint' (CROPD_MODEL / --model)" in stderr


# Run where cropd_hf cannot be imported (conftest.run_without_cropd_hf), space_app/ on PYTHONPATH (as `python app.py`).
WITHOUT_PACKAGE = """
    import json
    import sys
    from argparse import Namespace
    from pathlib import Path

    checkpoint, undefended, examples = sys.argv[1:]
    import app
    import model_loading
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

    # The app's default start, the declared checkpoint and the undefended one standing in for the shipped ones (their
    # Hub ids not published): the gallery shipped in space_app/examples, then a request on its first digit.
    model_loading.SHIPPED = (model_loading.ShippedCheckpoint(Path(checkpoint), "cropd-test/declared-not-published"),)
    model_loading.UNDEFENDED_HUB_ID = "cropd-test/undefended-not-published"
    model_loading.UNDEFENDED_CHECKPOINT = Path(undefended)
    (model,), default_gallery = app.start(Namespace(model=None, examples=None), Path("dataset-examples"))
    *_, clean, attacked, defended, status = app.respond(model, default_gallery[0][0], "FGSM", 0.1)
    print(json.dumps({
        "pipeline": type(robust).__module__,
        "undefended": type(separate.undefended_model).__module__,
        "chains": chains,
        "gallery": [caption for _, caption in gallery],
        "refused": refused,
        "defended": result["attacked_with_purifier"],
        "default": {
            "model": [model.name, type(model.robust).__module__, model.undefended],
            "gallery": default_gallery,
            "labels": [sorted(clean), sorted(attacked), sorted(defended)],
            "status": status,
        },
    }))
    """


@pytest.mark.slow
def test_without_the_package_the_space_runs_the_checkpoints_own_code(
    checkpoint, foundation_folder, example, tmp_path, monkeypatch
):
    declared = tmp_path / "declared"
    pipeline("robust-image-classification", model=str(checkpoint)).save_pretrained(declared)
    undefended = save_checkpoint(tmp_path / "undefended", foundation_folder, use_purifier=False)
    examples = tmp_path / "examples"
    examples.mkdir()
    shutil.copy(example, examples / "digit.png")
    monkeypatch.setenv("PYTHONPATH", str(SPACE))
    # Two starts of the app's code and four attacks: more than the helper's default time on a loaded machine.
    arguments = (str(declared), str(undefended), str(examples))
    output = run_without_cropd_hf(WITHOUT_PACKAGE, *arguments, folder=tmp_path, timeout=600)
    report = json.loads(output.strip().splitlines()[-1])
    assert report["pipeline"].startswith("transformers_modules.")
    assert report["undefended"].startswith("transformers_modules.")
    assert report["chains"] == ["the purifier's head without the purifier", "separate undefended model"]
    assert report["gallery"] == ["digit"]
    assert "datasets need the cropd_hf package" in report["refused"]
    assert {entry["label"] for entry in report["defended"]} == set(LABELS.values())

    # By default, without the package: the checkpoint's own code, and the shipped gallery of 12 MNIST test digits.
    default = report["default"]
    assert default["model"][0] == str(declared) and default["model"][1].startswith("transformers_modules.")
    assert default["model"][2] == str(undefended)
    captions = json.loads((SPACE / "examples" / "captions.json").read_text())
    assert default["gallery"] == [[str(SPACE / "examples" / name), caption] for name, caption in captions.items()]
    assert len(default["gallery"]) == 12 and default["gallery"][0][1] == "test #0: 3"
    assert all(labels == sorted(LABELS.values()) for labels in default["labels"])
    assert f"Undefended classifier h'(f(x)), `{undefended}`" in default["status"]
