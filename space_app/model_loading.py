"""Which CRoPD model the Space runs, and how it is loaded (shared with benchmarks/pipeline_latency.py)."""

from pathlib import Path

from transformers import AutoImageProcessor, AutoModelForImageClassification, Pipeline, pipeline

REPO_ROOT = Path(__file__).resolve().parents[1]
# The default model: what `accelerate launch training/train.py` trains, copied into the repository.
EMBEDDED_CHECKPOINT = REPO_ROOT / "training" / "checkpoints" / "embedded"
TASK = "robust-image-classification"


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
