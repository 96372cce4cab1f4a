"""CRoPD Space: attack one image, white-box, and see what the purifier does.

    python space_app/app.py                                   # the embedded checkpoint: Hub, else its folder
    CROPD_MODEL=org/cropd-cifar10 python space_app/app.py     # any CRoPD checkpoint: Hub id or folder
    python space_app/app.py --model path/to/checkpoint --examples path/to/images --port 7861

Two white-box attacks run per request, each against its own chain: one against a classifier without defence, one
against `h(f(g(x)))` (CRoPD). The page shows the clean image, the adversarial image made against CRoPD, its
perturbation (amplified), the purified image `g(x_adv)` with its PSNR against the clean image, and the three
predictions.

The classifier without defence: the undefended classifier `h'(f(x))` (no purifier, a head trained on clean images),
`cropd-hf/cropd-embedded-mnist-undefended` on the Hub or else training/checkpoints/embedded-undefended
(model_loading.UNDEFENDED_HUB_ID, UNDEFENDED_CHECKPOINT), loaded once and used for every model with a purifier (it is
not a choice of the picker). Without it, or where it does not match a model (labels, image size, channels), the
model's own head without its `g`, `h(f(x))`: that head was trained on `f(g(x))`, so it is not a real undefended
classifier, and the page says so.

Models: by default the shipped checkpoints by their Hub ids (model_loading.SHIPPED): the CRoPD purifier
`cropd-hf/cropd-embedded-mnist`, and the robust encoder `cropd-hf/cropd-embedded-mnist-robust-encoder`, the page's
picker choosing one per request; each falls back to its folder in training/checkpoints when the Hub cannot serve it
(offline, not published), and stderr says which was loaded. What each is comes from its model card (the tag
`robust-encoder`), not its name. `--model` / `CROPD_MODEL` names one checkpoint: one of the shipped ones (its Hub id,
tried on the Hub then in its folder, or its folder) is then the default of the picker, any other the only choice.

Examples: `--examples` / `CROPD_EXAMPLES` is a folder of images or a dataset name known to `cropd_hf.data` (its
test split, the cropd_hf package installed); the shipped checkpoints default to space_app/examples, the first 12
embedded MNIST test digits (gallery.py), with or without the package. Without the cropd_hf package (a Space holding
only this folder), the checkpoint's own code runs (`trust_remote_code=True`): the checkpoint must then declare the
pipeline (saved with `RobustImageClassificationPipeline.save_pretrained`).
"""

import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import model_loading
import numpy as np
import PIL.Image
import torch
from gallery import EXAMPLES_FOLDER, StartupError, load_examples
from model_loading import (
    DESCRIPTIONS,
    REPO_ROOT,
    ShippedCheckpoint,
    checkpoint_kind,
    load_pipeline,
    load_undefended,
    with_undefended,
)
from transformers import Pipeline, PreTrainedModel

# Shown name -> (pipeline attack, PGD steps).
ATTACKS = {"PGD-10": ("pgd", 10), "PGD-20": ("pgd", 20), "FGSM": ("fgsm", None)}
EPSILON_RANGE = (0.0, 0.3)
# Native images are a few dozen pixels a side: shown larger, with visible pixels rather than a blur.
DISPLAY_SIZE = 224
# The images are a few kB: anything larger is not what the page is for.
MAX_UPLOAD = "5mb"
# Uploads and the images shown are deleted from gradio's cache: checked every 10 minutes, deleted after an hour.
DELETE_CACHE = (600, 3600)
ACCEPTED_IMAGES = "an image file (PNG, JPEG, BMP, GIF, WebP or another format PIL reads)"


@dataclass(frozen=True)
class Model:
    """One model of the picker: where it was loaded from, its pipeline, and what kind of model it is."""

    name: str  # the folder (relative to the repository when inside it) or Hub id, as the page shows it
    robust: Pipeline
    kind: str  # a key of model_loading.DESCRIPTIONS
    # The undefended classifier h'(f(x)) the pipeline attacks as the chain without defence (its shown name), or
    # None: that chain is then the model's own head without its g.
    undefended: str | None = None

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self.kind]

    @property
    def choice(self) -> str:
        """The picker's text for this model: what it is, then where it comes from."""
        return f"{self.description} — {self.name}"


def check_image_file(image: str) -> None:
    """Refuse a file that is not an image, by its content (PIL), whatever its name says."""
    name = Path(image).name
    if not os.path.isfile(image):
        raise gr.Error(f"No file {name!r}: pick an example or upload {ACCEPTED_IMAGES}.")
    try:
        with PIL.Image.open(image):  # the header only: cheap, and enough to know the format
            pass
    except PIL.Image.DecompressionBombError as error:
        raise gr.Error(f"{name!r} is too large an image ({error}).") from error
    except OSError as error:  # PIL.UnidentifiedImageError among them
        raise gr.Error(f"{name!r} is not an image, whatever its extension; accepted: {ACCEPTED_IMAGES}.") from error


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
    check_image_file(image)
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


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of `image` against `reference`, pixels in [0, 1]: 10·log10(1 / MSE)."""
    mse = float(np.mean((np.asarray(reference, np.float64) - np.asarray(image, np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def describe_purified(kind: str, images: dict[str, np.ndarray | None]) -> str:
    """What the purified panel shows, with its PSNR against the clean image, both at native size."""
    if images["purified"] is None:
        return "No purifier: there is no g(x_adv) to compare with the clean x."
    height, width = images["input"].shape[:2]
    value = psnr(images["input"], images["purified"])
    text = (
        f"PSNR of the purified g(x_adv) against the clean x: **{value:.1f} dB** "
        f"(10·log10(1/MSE), pixels in [0, 1], at the native {width} x {height}; higher is closer)."
    )
    if kind == "robust-encoder":
        text += (
            "\n\nThis model is a robust encoder, not a purifier: its g(x_adv) is a code for f and is not meant to "
            "look like the digit, so a low PSNR is what it does, not a failure."
        )
    return text


NO_PURIFIER_KINDS = ("identity", "undefended")
# The "Attacked, no defence" panel: which classifier that chain is.
UNDEFENDED_MODEL_TITLE = (
    "Attacked, no defence: h'(f(x_adv')) (the undefended classifier: a head trained on clean images, attacked on "
    "its own)"
)
NO_PURIFIER_TITLE = "Attacked, no defence: {head}(f(x_adv')) (this model itself: it has no purifier)"


def head_without_g_title(g: str) -> str:
    return (
        f"Attacked, no defence: h(f(x_adv')) (the head without the {g}: trained on f(g(x)), not a real undefended "
        "classifier; attacked on its own)"
    )


def titles(kind: str, separate_undefended: bool = False) -> dict[str, str]:
    """Each panel's title for a kind of model: what the panel shows, in the chain's own notation.

    `separate_undefended`: the chain without defence is the undefended classifier h'(f(x)), not the model's head.
    """
    if kind in NO_PURIFIER_KINDS:
        head = "h'" if kind == "undefended" else "h"
        return {
            "adversarial": f"Adversarial x_adv (made against {head}(f(x)): this model has no purifier)",
            "purified": "Purified: none (this model has no purifier)",
            "clean": f"Clean: {head}(f(x))",
            "undefended": NO_PURIFIER_TITLE.format(head=head),
            "defended": "Attacked, with the purifier: none (this model has no purifier)",
        }
    purified = "Purified g(x_adv)"
    defended = "Attacked, with the purifier: h(f(g(x_adv)))"
    undefended = head_without_g_title("purifier")
    if kind == "robust-encoder":
        purified = "Purified g(x_adv): a code for f, not meant to look like the digit"
        defended = "Attacked, with the robust encoder: h(f(g(x_adv)))"
        undefended = head_without_g_title("robust encoder")
    return {
        "adversarial": "Adversarial x_adv (made against h(f(g(x))))",
        "purified": purified,
        "clean": "Clean: h(f(g(x)))",
        "undefended": UNDEFENDED_MODEL_TITLE if separate_undefended else undefended,
        "defended": defended,
    }


def model_titles(model: Model) -> dict[str, str]:
    return titles(model.kind, model.undefended is not None)


CLEAN_TITLE = "Clean x"
PERTURBATION_TITLE = "Perturbation x_adv − x (gray = 0, black = −ε, white = +ε)"


def confidences(prediction: list[dict[str, Any]] | None, kind: str = "identity") -> dict[str, float] | str:
    if prediction is None:  # only the chain with the purifier, on a model without one
        if kind == "undefended":
            return "no purifier: this model is the undefended classifier"
        return "no purifier: this model is the Identity baseline"
    return {entry["label"]: entry["score"] for entry in prediction}


def describe_undefended(result: dict[str, Any], model: Model) -> str:
    """The chain without defence in words: which classifier it is, and its prediction clean and attacked."""
    clean, attacked = result.get("clean_without_purifier"), result.get("attacked_without_purifier")
    if not clean or not attacked:  # a checkpoint whose pipeline code predates `clean_without_purifier`
        return ""
    change = f"clean → **{clean[0]['label']}**, attacked → **{attacked[0]['label']}**"
    if model.undefended is not None:
        return f"Undefended classifier h'(f(x)), `{model.undefended}`: {change}."
    if model.kind in NO_PURIFIER_KINDS:
        return f"No defence (this model itself, it has no purifier): {change}."
    g = "robust encoder" if model.kind == "robust-encoder" else "purifier"
    return (
        f"No defence: the head without the {g}, h(f(x)) (trained on f(g(x)), not a real undefended classifier): "
        f"{change}."
    )


def describe(result: dict[str, Any], seconds: float, model: Model) -> str:
    settings = result["attack"]
    attack = f"**{settings['name']}**, ε = {settings['eps']:.4g}"
    if settings["name"] == "PGD":
        attack += f", α = {settings['alpha']:.4g}, {settings['steps']} steps, {settings['restarts']} restart"
        attack += ", random start (seed 0)" if settings["random_start"] else ""
    defence = "no purifier (Identity baseline)" if model.kind == "identity" else model.description
    undefended = describe_undefended(result, model)
    return (
        f"{attack}; white-box, each chain attacked away from its own clean prediction. Model: {defence}, "
        f"`{model.name}`. {undefended + ' ' if undefended else ''}Answered in {seconds:.2f} s."
    )


def respond(model: Model, image: str | None, attack: str, epsilon: float) -> tuple:
    """The page's outputs for one request: four images, the purified image's PSNR, three label panels, the attack.

    Values only (what an API client gets): the panels' titles follow the model picked (`titles`, on the picker).
    """
    start = time.perf_counter()
    result = attack_image(model.robust, image, attack, epsilon)
    seconds = time.perf_counter() - start
    images = result["images"]
    # The adversarial image shown is the one made against the model's whole chain, purifier included if any.
    chain = "with_purifier" if result["has_purifier"] else "without_purifier"
    return (
        to_display(images["input"]),
        to_display(images[f"adversarial_{chain}"]),
        amplified(images[f"perturbation_{chain}"], epsilon),
        to_display(images["purified"]),
        describe_purified(model.kind, images),
        confidences(result["clean"]),
        confidences(result["attacked_without_purifier"]),
        confidences(result["attacked_with_purifier"], model.kind),
        describe(result, seconds, model),
    )


def epsilon_slider(default: float) -> gr.Slider:
    """The ε slider, handing any value to the app, which says what is wrong with it.

    gradio's own slider compares the value with its bounds first: a string sent through the API (the page cannot)
    would then fail inside gradio with a bare "Error" instead of the app's message. (An instance attribute, not a
    subclass: gradio writes a .pyi stub next to the module of any component subclass.)
    """
    slider = gr.Slider(
        *EPSILON_RANGE, value=default, step=0.005, label="ε (L∞ radius, pixels in [0, 1])", elem_id="epsilon"
    )
    slider.preprocess = lambda payload: payload  # checked by attack_image
    return slider


def build_demo(models: list[Model], examples: list[tuple[str, str]]) -> gr.Blocks:
    """The page: `models` are the picker's choices, the default first."""
    by_name = {model.name: model for model in models}
    default = models[0]
    default_epsilon = min(max(float(default.robust.model.config.train_epsilon), EPSILON_RANGE[0]), EPSILON_RANGE[1])

    # gradio hands the progress tracker in through this default.
    def run(image: str | None, attack: str, epsilon: float, model: str, progress: gr.Progress = gr.Progress()) -> tuple:  # noqa: B008
        if model not in by_name:
            raise gr.Error(f"Unknown model {model!r}; accepted: {', '.join(map(repr, by_name))}.")
        progress(0.1, desc=f"{attack} against both chains (two white-box attacks)…")
        return respond(by_name[model], image, attack, epsilon)

    def show(name: str) -> tuple:
        """A newly picked model: the panels' titles for it, and no results of the previous one."""
        title = model_titles(by_name[name]) if name in by_name else titles("purifier")
        return (
            None,
            gr.update(value=None, label=title["adversarial"]),
            None,
            gr.update(value=None, label=title["purified"]),
            "",
            gr.update(value=None, label=title["clean"]),
            gr.update(value=None, label=title["undefended"]),
            gr.update(value=None, label=title["defended"]),
            "",
        )

    with gr.Blocks(title="CRoPD: attack versus purified", analytics_enabled=False, delete_cache=DELETE_CACHE) as demo:
        gr.Markdown(
            "# CRoPD: attack versus purified\n"
            "A white-box L∞ attack against a classifier without defence, and another against the classifier behind "
            "the model's `g`, `h(f(g(x)))` ([arXiv 2504.10850](https://arxiv.org/abs/2504.10850)). The classifier "
            "without defence is the undefended classifier `h'(f(x))` (a head trained on clean images) when the Space "
            "has one; otherwise the model's own head without its `g`, `h(f(x))`, which was trained on `f(g(x))` and "
            'is not a real undefended classifier. The "Attacked, no defence" panel says which.'
            "\n\n"
            "Pick the model: a CRoPD purifier `g` gives back an image that looks like its input (a purified "
            "picture of the digit); a robust encoder's `g(x)` is a code for the foundation model `f`, not a "
            "picture. The adversarial image is the one made against the model's whole chain; the perturbation is "
            "stretched from ±ε to the full range (gray = 0, black = −ε, white = +ε); the purified image is what `g` "
            "makes of the adversarial one, with its PSNR against the clean image."
        )
        with gr.Row():
            with gr.Column(scale=1):
                model = gr.Radio(
                    [(entry.choice, entry.name) for entry in models],
                    value=default.name,
                    label="Model",
                    elem_id="model",
                )
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
                epsilon = epsilon_slider(default_epsilon)
                button = gr.Button("Attack", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                title = model_titles(default)
                # Two by two: each panel wide enough for its title.
                shown = []
                for pair in (
                    ((CLEAN_TITLE, "clean-image"), (title["adversarial"], "adversarial-image")),
                    ((PERTURBATION_TITLE, "perturbation-image"), (title["purified"], "purified-image")),
                ):
                    with gr.Row():
                        for label, elem_id in pair:
                            with gr.Column(min_width=200):
                                shown.append(
                                    gr.Image(label=label, type="pil", format="png", interactive=False, elem_id=elem_id)
                                )
                                if elem_id == "purified-image":
                                    purified_psnr = gr.Markdown(elem_id="purified-psnr")
                with gr.Row():
                    labels = [
                        gr.Label(label=label, num_top_classes=3, elem_id=elem_id)
                        for label, elem_id in (
                            (title["clean"], "clean-label"),
                            (title["undefended"], "undefended-label"),
                            (title["defended"], "defended-label"),
                        )
                    ]
                status = gr.Markdown(elem_id="status")

        def pick(selection: gr.SelectData) -> str:
            return examples[selection.index][0]

        outputs = [*shown[:4], purified_psnr, *labels, status]
        gallery.select(pick, None, image, api_name=False)
        model.change(show, model, outputs, api_name=False)
        button.click(run, [image, attack, epsilon, model], outputs, api_name="attack")
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        default=os.environ.get("CROPD_MODEL") or None,
        help="CRoPD checkpoint, Hub id or folder (env CROPD_MODEL; default: the shipped checkpoints, the embedded "
        "one first, from the Hub or else from training/checkpoints)",
    )
    parser.add_argument(
        "--examples",
        default=os.environ.get("CROPD_EXAMPLES"),
        help="folder of images or dataset name for the gallery (env CROPD_EXAMPLES)",
    )
    parser.add_argument("--port", type=int, help="default: GRADIO_SERVER_PORT, else 7860")
    parser.add_argument("--host", help="default: GRADIO_SERVER_NAME, else 127.0.0.1")
    return parser.parse_args(argv)


def shown_name(source: str) -> str:
    """A folder inside the repository relative to it (as the README names it); anything else as given."""
    path = Path(source).resolve()
    if path.is_dir() and path.is_relative_to(REPO_ROOT):
        return str(path.relative_to(REPO_ROOT))
    return source


def model_sources(model: str | None) -> tuple[list[list[str]], bool]:
    """For each model to offer, default first, where to load it from (tried in order); and whether they are the
    shipped checkpoints (whose examples are the embedded MNIST test split).

    By default, and when `model` is a shipped Hub id, each shipped checkpoint is tried on the Hub first, then in its
    folder (offline, or not published yet); `model` naming a shipped folder keeps to the folders.
    """
    shipped: tuple[ShippedCheckpoint, ...] = model_loading.SHIPPED
    named = [
        entry
        for entry in shipped
        if model is None or model == entry.hub_id or Path(model).resolve() == entry.folder.resolve()
    ]
    if not named:
        return [[model]], False
    from_hub = model is None or model == named[0].hub_id
    sources = []
    for entry in [named[0], *(entry for entry in shipped if entry is not named[0])]:
        tries = ([entry.hub_id] if from_hub else []) + [str(entry.folder)] * entry.folder.is_dir()
        if entry is named[0] or tries:  # the one named is tried even if absent: its failure is then said
            sources.append(tries or [str(entry.folder)])
    return sources, True


def load_undefended_classifier(loader: model_loading.SourceLoader) -> tuple[str, PreTrainedModel] | None:
    """The undefended classifier (shown name, model): from the Hub, else from its folder when that exists; None
    when neither serves it (said on stderr: the Space then runs without it)."""
    folder = model_loading.UNDEFENDED_CHECKPOINT
    tries = [model_loading.UNDEFENDED_HUB_ID] + [str(folder)] * folder.is_dir()
    loaded = loader.first(tries, load_undefended, "undefended classifier")
    if isinstance(loaded, tuple):
        source, classifier = loaded
        return shown_name(source), classifier
    if folder.is_dir():  # a broken checkpoint: the page still works, with the head without g
        print(f"warning: the undefended classifier cannot be loaded: {'; '.join(loaded)}", file=sys.stderr)
    return None


def attach_undefended(
    robust: Pipeline, source: str, undefended: tuple[str, PreTrainedModel] | None
) -> tuple[Pipeline, str | None]:
    """`robust` with the undefended classifier as its chain without defence, and that classifier's shown name; or
    `robust` as it is and None, for a model without a purifier, or one the classifier does not match."""
    if undefended is None or not robust.model.config.use_purifier:
        return robust, None
    name, classifier = undefended
    try:
        return with_undefended(robust, classifier), name
    except (ValueError, TypeError) as error:  # other labels or image size; a checkpoint's older pipeline code
        print(
            f"warning: the undefended classifier {name} is not used with {source} (its chain without defence is "
            f"its own head without g): {type(error).__name__}: {error}",
            file=sys.stderr,
        )
        return robust, None


def load_models(model: str | None) -> tuple[list[Model], bool]:
    """The picker's models, default first (loaded once: they are small); and whether they are the shipped ones.

    The undefended classifier, when its folder exists, is loaded once too and is the chain without defence of every
    model with a purifier; it is never a choice of the picker.
    """
    sources, shipped = model_sources(model)
    loader = model_loading.SourceLoader()
    undefended = load_undefended_classifier(loader)
    models = []
    for index, tries in enumerate(sources):
        loaded = loader.first(tries, load_pipeline, "model")
        if isinstance(loaded, tuple):
            source, robust = loaded
            kind = checkpoint_kind(robust, source)
            robust, undefended_name = attach_undefended(robust, source, undefended)
            models.append(Model(shown_name(source), robust, kind, undefended_name))
        elif index == 0:
            named = f"{model!r} (CROPD_MODEL / --model)" if model else f"{tries[0]!r} (the default)"
            default = model_loading.SHIPPED[0].folder
            hint = ""
            if shipped and not default.is_dir():
                hint = (
                    f" The embedded checkpoint's folder {default} is not there either: train it with `accelerate "
                    "launch training/train.py` and copy its output folder there, or point CROPD_MODEL / --model at "
                    "a CRoPD checkpoint (Hub id or folder)."
                )
            raise StartupError(f"Cannot load the CRoPD model {named}: {'; '.join(loaded)}.{hint}")
        else:
            print(f"warning: not offered, cannot be loaded: {'; '.join(loaded)}", file=sys.stderr)
    return models, shipped


def start(args: argparse.Namespace, examples_folder: Path) -> tuple[list[Model], list[tuple[str, str]]]:
    """The models, and the gallery: the one named, else for the shipped checkpoints their own test digits, shipped
    in space_app/examples (no package needed), else none. Dataset examples are written to `examples_folder`."""
    models, shipped = load_models(args.model)
    source = args.examples
    if source is None and shipped:
        source = str(EXAMPLES_FOLDER)
    examples = load_examples(source, examples_folder) if source else []
    return models, examples


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if "OMP_NUM_THREADS" not in os.environ:
        # One request at a time on a small model: one thread answered a PGD-10 request 9x faster than two on a
        # shared 2-core machine (benchmarks/pipeline_latency.py); on an idle one two could at best halve it.
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="cropd-examples-") as folder:
        try:
            models, examples = start(args, Path(folder))
        except StartupError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        demo = build_demo(models, examples)
        # Example files may live outside gradio's own folders.
        allowed = [folder, *{str(Path(path).parent) for path, _ in examples}]
        demo.launch(server_name=args.host, server_port=args.port, allowed_paths=allowed, max_file_size=MAX_UPLOAD)


if __name__ == "__main__":
    main()
