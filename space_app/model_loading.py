"""Which CRoPD models the Space runs, and how they are loaded (shared with benchmarks/pipeline_latency.py).

The default models are named by their Hub ids (`SHIPPED`, `UNDEFENDED_HUB_ID`): a Space holding only this folder
downloads them. Each falls back to its folder in training/checkpoints when the Hub cannot serve it (a clone of the
repository offline, or with HF_HUB_OFFLINE=1), and the app says which one it loaded.
"""

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, OfflineModeIsEnabled
from transformers import AutoImageProcessor, AutoModelForImageClassification, Pipeline, PreTrainedModel, pipeline

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = REPO_ROOT / "training" / "checkpoints"
# The default model: what `accelerate launch training/train.py` trains, copied into the repository.
EMBEDDED_CHECKPOINT = CHECKPOINTS / "embedded"
# A learned robust encoder in front of the same f: its g(x) is a code for f, not a picture of x.
ROBUST_ENCODER_CHECKPOINT = CHECKPOINTS / "embedded-robust-encoder"
# The undefended classifier h'(f(x)): no purifier, a head trained on clean f(x), the same f. Not a choice of the
# picker: when this folder exists it is every purifier's chain without defence (the "Attacked, no defence" panel).
UNDEFENDED_CHECKPOINT = CHECKPOINTS / "embedded-undefended"
TASK = "robust-image-classification"

# The model card tag (README.md front matter, `tags:`) that marks a robust encoder: the kind of a checkpoint is read
# from its card, never guessed from its name.
ROBUST_ENCODER_TAG = "robust-encoder"
# The model card tag of the undefended classifier (a checkpoint without a purifier, shipped for comparison).
UNDEFENDED_TAG = "undefended"
# What each kind of checkpoint is, in the words the page shows.
DESCRIPTIONS = {
    "purifier": "CRoPD purifier (faithful: g(x) looks like x)",
    "robust-encoder": "Robust encoder (not a purifier: g(x) is a code for f, not an image of the digit)",
    "identity": "No purifier (Identity baseline: the head alone, h(f(x)))",
    "undefended": "Undefended classifier (no purifier: h'(f(x)), a head trained on clean images)",
    "unknown": "CRoPD model whose model card could not be read (purifier or robust encoder: unknown)",
}


@dataclass(frozen=True)
class ShippedCheckpoint:
    """A checkpoint of the repository: its folder, and the Hub id it is published under."""

    folder: Path
    hub_id: str


# The Hub ids of the checkpoints the Space runs by default (README.md's `models:` lists them too).
EMBEDDED_HUB_ID = "cropd-hf/cropd-embedded-mnist"
ROBUST_ENCODER_HUB_ID = "cropd-hf/cropd-embedded-mnist-robust-encoder"
UNDEFENDED_HUB_ID = "cropd-hf/cropd-embedded-mnist-undefended"
# The checkpoints the Space offers by default, the default first: each tried on the Hub, then in its folder.
SHIPPED = (
    ShippedCheckpoint(EMBEDDED_CHECKPOINT, EMBEDDED_HUB_ID),
    ShippedCheckpoint(ROBUST_ENCODER_CHECKPOINT, ROBUST_ENCODER_HUB_ID),
)


def hub_unreachable(error: BaseException) -> bool:
    """Whether `error`, raised while loading a Hub id, says that the Hub could not be reached at all (no network,
    offline mode) rather than that it has no such repository: the other Hub ids are then not tried either."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, (LocalEntryNotFoundError, OfflineModeIsEnabled, httpx.TransportError)):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def is_embedded(model: str) -> bool:
    return Path(model).resolve() == EMBEDDED_CHECKPOINT


def load_pipeline(model: str) -> Pipeline:
    """The `robust-image-classification` pipeline for a CRoPD checkpoint (Hub id or folder)."""
    try:
        import cropd_hf  # noqa: F401  (registers the model type and the task)
    except ImportError:
        # A Space holding only this folder: the checkpoint's own code (pipeline_cropd.py and the rest) runs.
        return pipeline(model=model, trust_remote_code=True)
    classifier = AutoModelForImageClassification.from_pretrained(model)
    # A model object, not its name: a checkpoint that declares the pipeline for remote code would otherwise make
    # transformers ask for trust_remote_code even though cropd_hf is installed.
    return pipeline(TASK, model=classifier, image_processor=AutoImageProcessor.from_pretrained(model))


def load_undefended(model: str) -> PreTrainedModel:
    """The undefended classifier of a checkpoint (folder or Hub id): the model alone, for the pipeline's
    `undefended_model`; loaded once and shared by every purifier's pipeline."""
    try:
        import cropd_hf  # noqa: F401  (registers the model type)
    except ImportError:
        return AutoModelForImageClassification.from_pretrained(model, trust_remote_code=True)
    return AutoModelForImageClassification.from_pretrained(model)


def with_undefended(robust: Pipeline, undefended: PreTrainedModel) -> Pipeline:
    """`robust` with `undefended` as its chain without defence, h'(f(x)).

    The pipeline checks that the two match (labels, image size, channels; ValueError otherwise); the code of a
    checkpoint older than `undefended_model` refuses it (TypeError).
    """
    return type(robust)(
        model=robust.model,
        image_processor=robust.image_processor,
        task=robust.task,
        device=robust.device,
        undefended_model=undefended,
    )


def card_tags(model: str) -> list[str]:
    """The `tags:` of a checkpoint's model card (the front matter of its README.md): folder or Hub id.

    A checkpoint without a card, or a card without tags, has none. A Hub card that cannot be fetched raises.
    """
    if Path(model).is_dir():
        readme = Path(model) / "README.md"
        metadata = metadata_load(readme) if readme.is_file() else None
        tags = (metadata or {}).get("tags")
    else:
        try:
            tags = ModelCard.load(model).data.tags
        except EntryNotFoundError:  # a Hub repository without README.md
            return []
    if isinstance(tags, str):
        return [tags]
    return [str(tag) for tag in tags or []]


def checkpoint_kind(robust: Pipeline, model: str) -> str:
    """ "purifier", "robust-encoder", "identity" (no g at all), "undefended" (no g, carded as the undefended
    classifier) or "unknown" (the card could not be read)."""
    if not robust.model.config.use_purifier:
        try:
            return "undefended" if UNDEFENDED_TAG in card_tags(model) else "identity"
        except Exception:  # no g either way: the Identity baseline's words are true of it
            return "identity"
    try:
        tags = card_tags(model)
    except Exception:  # an unreachable Hub, a malformed front matter: the page says it does not know
        return "unknown"
    return "robust-encoder" if ROBUST_ENCODER_TAG in tags else "purifier"


def is_hub_id(source: str) -> bool:
    return source.count("/") == 1 and not source.startswith((".", "/", "~")) and not Path(source).exists()


class SourceLoader:
    """Loads the first source of a list (Hub ids and folders) that works, and says on stderr which one it loaded.

    Once the Hub proves unreachable (no network, or HF_HUB_OFFLINE=1 and the model not in the local cache), the
    remaining Hub ids are not tried: an offline start costs one failed Hub request at most, not one per model.
    """

    def __init__(self) -> None:
        self.hub_down: str | None = None  # why Hub ids are no longer tried

    def first(self, tries: list[str], load: Callable[[str], Any], role: str) -> tuple[str, Any] | list[str]:
        """(source, loaded object) for the first source of `tries` that loads; else the failures, one per source."""
        failures = []
        for source in tries:
            hub = is_hub_id(source)
            if hub and self.hub_down:
                failures.append(f"{source}: {self.hub_down}")
                continue
            try:
                loaded = load(source)
            except Exception as error:  # anything from a missing folder to a network failure: said once, clearly
                failures.append(f"{source}: {type(error).__name__}: {error}")
                if hub and hub_unreachable(error):
                    self.hub_down = f"not tried: the Hub could not be reached ({type(error).__name__})"
                continue
            for failure in failures:
                print(f"warning: loaded {source} instead of {failure}", file=sys.stderr)
            print(f"{role}: {source} ({'from the Hub' if hub else 'local folder'})", file=sys.stderr)
            return source, loaded
        return failures
