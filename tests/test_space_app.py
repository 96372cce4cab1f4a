"""The Gradio Space's app in this process: which models it offers and loads (Hub ids, local fallbacks), how it
labels each chain, the checks of a request, the PSNR it shows and its galleries (the shipped one checked against the
dataset), and what the Space installs (requirements.txt against every import). The app served for real (client,
browser, no package) is tests/test_space_server.py.
"""

import ast
import hashlib
import importlib.metadata
import json
import math
import re
import shutil
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import app as space
import gallery
import gradio as gr
import huggingface_hub.constants
import model_loading
import numpy as np
import pytest
import torch
from huggingface_hub import metadata_save
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from PIL import Image
from space_testing import LABELS, PURIFIER, REPO, ROBUST_ENCODER, SPACE, save_checkpoint

from cropd_hf import CRoPDForImageClassification, CRoPDImageProcessor
from cropd_hf.refresh_remote_code import REMOTE_CODE

# The app's default models are Hub ids: loading one must fail at once, offline.
pytestmark = pytest.mark.usefixtures("hub_offline")


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
    # gradio's cache (uploads, the images shown) is checked every 600 s and cleared of files older than 3600 s.
    assert demo.delete_cache == (600, 3600)

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


def test_the_app_launches_with_a_5_mb_upload_cap_and_its_cache_cleaned_hourly(checkpoint, monkeypatch):
    launched = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda demo, **options: launched.append((demo, options)))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # main then leaves torch's thread count alone
    monkeypatch.delenv("CROPD_EXAMPLES", raising=False)
    space.main(["--model", str(checkpoint)])
    ((demo, options),) = launched
    assert options["max_file_size"] == "5mb"
    assert demo.delete_cache == (600, 3600)


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
    # captions.json captions the images it names; the others keep their file name.
    (folder / "captions.json").write_text(json.dumps({"b-seven.png": "a seven", "gone.png": "no such image"}))
    assert [caption for _, caption in space.load_examples(str(folder), tmp_path)] == ["a-two", "a seven"]
    (folder / "captions.json").write_text('["a seven"]')
    with pytest.raises(space.StartupError, match="must be a JSON object"):
        space.load_examples(str(folder), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(space.StartupError, match="holds no image"):
        space.load_examples(str(tmp_path / "empty"), tmp_path)
    with pytest.raises(space.StartupError, match="nor one of the datasets"):
        space.load_examples("no-such-dataset", tmp_path)
    with pytest.raises(space.StartupError, match="Cannot load the examples 'cifar10'"):
        space.load_examples("cifar10", tmp_path)  # a Hub dataset, offline


def folder_contents(folder: Path) -> dict[str, object]:
    """Each file of `folder` by name: an image as (mode, size, pixels), captions.json as its JSON."""
    contents = {}
    for path in sorted(folder.iterdir()):
        if path.name == gallery.CAPTIONS_FILE:
            contents[path.name] = json.loads(path.read_text(encoding="utf-8"))
        else:
            with Image.open(path) as image:
                contents[path.name] = (image.mode, image.size, np.asarray(image).tolist())
    return contents


@pytest.mark.slow  # the dataset: 5,000 digits made into a `datasets` table
def test_the_shipped_gallery_is_the_first_test_digits_of_embedded_mnist(tmp_path):
    # The folder the Space ships is what the generator writes from the dataset, file for file and pixel for pixel.
    written = gallery.write_examples(gallery.EMBEDDED_EXAMPLES, tmp_path)
    assert len(written) == gallery.NUM_EXAMPLES == 12
    assert folder_contents(gallery.EXAMPLES_FOLDER) == folder_contents(tmp_path), (
        "space_app/examples is not what the dataset gives: run `python space_app/gallery.py`"
    )
    # Read from the folder: the images and captions that naming the dataset gives (load_examples writes them so).
    read = space.load_examples(str(gallery.EXAMPLES_FOLDER), tmp_path / "unused")
    assert [(Path(path).name, caption) for path, caption in read] == [
        (Path(path).name, caption) for path, caption in written
    ]


def test_the_shipped_checkpoints_get_the_shipped_gallery_by_default(checkpoint, tmp_path, monkeypatch):
    captions = json.loads((gallery.EXAMPLES_FOLDER / gallery.CAPTIONS_FILE).read_text())
    expected = [(str(gallery.EXAMPLES_FOLDER / name), caption) for name, caption in captions.items()]
    assert len(expected) == 12 and expected[0][1] == "test #0: 3"
    assert space.load_examples(str(gallery.EXAMPLES_FOLDER), tmp_path) == expected
    # By default (with or without cropd_hf: test_space_server.py runs it without); any other model has none unless
    # --examples names one.
    shipped(monkeypatch, copy_checkpoint(checkpoint, tmp_path / "checkpoints" / "embedded", ["cropd"]))
    assert space.start(Namespace(model=None, examples=None), tmp_path / "unused")[1] == expected
    assert space.start(Namespace(model=str(checkpoint), examples=None), tmp_path)[1] == []


# The one option line requirements.txt may hold: a CPU Space's torch from PyTorch's CPU wheel index.
CPU_TORCH_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"


def space_requirements() -> tuple[list[str], list[Requirement]]:
    """requirements.txt's option lines and its requirements (comments and blank lines left out)."""
    options, requirements = [], []
    for line in (SPACE / "requirements.txt").read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if line.startswith("-"):
            options.append(line)
        elif line and not line.startswith("#"):
            requirements.append(Requirement(line))  # a PEP 508 requirement, or InvalidRequirement
    return options, requirements


def imported_modules(path: Path) -> dict[str, bool]:
    """The top-level modules `path` imports (relative imports left out), each with whether every import of it sits
    in a `try` that catches ImportError (an optional module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    guarded_nodes = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(handler.type, ast.Name) and handler.type.id in ("ImportError", "ModuleNotFoundError")
            for handler in node.handlers
        ):
            guarded_nodes.update(id(inner) for statement in node.body for inner in ast.walk(statement))
    modules: dict[str, bool] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            modules[top] = modules.get(top, True) and id(node) in guarded_nodes
    return modules


def test_the_space_installs_published_packages_that_provide_every_module_it_imports():
    options, requirements = space_requirements()
    assert options == [CPU_TORCH_INDEX]
    assert requirements and all(requirement.url is None for requirement in requirements)  # no git, no file
    names = {canonicalize_name(requirement.name): requirement for requirement in requirements}

    # Lower bounds as pyproject.toml's, for each package both name.
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        dependency = Requirement(line)
        if canonicalize_name(dependency.name) in names:
            assert names[canonicalize_name(dependency.name)].specifier == dependency.specifier, dependency.name

    # What runs in the Space: its own files, and the checkpoints' remote code (cropd_hf is not installed there).
    files = sorted(SPACE.glob("*.py")) + [REPO / "cropd_hf" / name for name in REMOTE_CODE]
    local = {path.stem for path in SPACE.glob("*.py")}
    distributions = importlib.metadata.packages_distributions()
    provided, unprovided = set(), []
    for path in files:
        for module, optional in imported_modules(path).items():
            if module in sys.stdlib_module_names or module in local or module == "gradio":  # gradio: sdk_version
                continue
            if module == "cropd_hf":
                assert optional, f"{path.name} imports cropd_hf outside a try/except ImportError"
                continue
            giving = {canonicalize_name(name) for name in distributions.get(module, [])}
            if giving & set(names):
                provided |= giving & set(names)
            else:
                unprovided.append(f"{path.name}: {module} ({', '.join(sorted(giving)) or 'no distribution'})")
    assert unprovided == []
    # Nothing more than that: safetensors is the checkpoints' weights format, read by transformers.
    assert set(names) == provided | {"safetensors"}


@pytest.mark.slow
def test_pip_reads_the_space_requirements_and_this_environment_meets_them():
    # A dry run through a proxy that answers nothing: pip reads the file, the index option included, and finds every
    # requirement already met without a network request (one would fail).
    completed = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--dry-run", "--disable-pip-version-check"),
            *("--retries", "0", "--timeout", "2", "--proxy", "http://127.0.0.1:9"),
            *("-r", str(SPACE / "requirements.txt")),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    assert "https://download.pytorch.org/whl/cpu" in completed.stdout.splitlines()[0]  # "Looking in indexes: ..."
    assert "Would install" not in completed.stdout
