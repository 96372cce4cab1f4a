"""CRoPD for Hugging Face: a robust purifier in front of a frozen foundation model (arXiv 2504.10850)."""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
)
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_cropd import CRoPDConfig
from .image_processing_cropd import CRoPDImageProcessor
from .modeling_cropd import (
    CRoPDForImageClassification,
    CRoPDImageClassifierOutput,
    CRoPDModel,
    CRoPDPreTrainedModel,
    CRoPDPurifierOutput,
    initialize_vit_mae_embeddings,
    pool_foundation_outputs,
)
from .pipeline_cropd import TASK, RobustImageClassificationPipeline

# In-process: the Auto classes know `cropd` once this package is imported.
AutoConfig.register(CRoPDConfig.model_type, CRoPDConfig, exist_ok=True)
AutoModel.register(CRoPDConfig, CRoPDModel, exist_ok=True)
AutoModelForImageClassification.register(CRoPDConfig, CRoPDForImageClassification, exist_ok=True)
AutoImageProcessor.register(CRoPDConfig, slow_image_processor_class=CRoPDImageProcessor, exist_ok=True)

# Out of process: save_pretrained copies these self-contained files and writes `auto_map`, so a checkpoint
# loads with trust_remote_code=True where cropd_hf is not installed.
CRoPDConfig.register_for_auto_class()
CRoPDModel.register_for_auto_class("AutoModel")
CRoPDForImageClassification.register_for_auto_class("AutoModelForImageClassification")
CRoPDImageProcessor.register_for_auto_class("AutoImageProcessor")

# pipeline("robust-image-classification", model=...) once this package is imported. The pipeline's own
# save_pretrained also declares the task in config.json and copies pipeline_cropd.py and attacks.py, so such a
# checkpoint runs it with trust_remote_code=True where cropd_hf is not installed.
PIPELINE_REGISTRY.register_pipeline(
    TASK, pipeline_class=RobustImageClassificationPipeline, pt_model=AutoModelForImageClassification, type="image"
)

__all__ = [
    "CRoPDConfig",
    "CRoPDForImageClassification",
    "CRoPDImageClassifierOutput",
    "CRoPDImageProcessor",
    "CRoPDModel",
    "CRoPDPreTrainedModel",
    "CRoPDPurifierOutput",
    "RobustImageClassificationPipeline",
    "initialize_vit_mae_embeddings",
    "pool_foundation_outputs",
]
