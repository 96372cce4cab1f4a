"""CRoPD for Hugging Face: a robust purifier in front of a frozen foundation model (arXiv 2504.10850)."""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
)

from .configuration_cropd import CRoPDConfig
from .image_processing_cropd import CRoPDImageProcessor
from .modeling_cropd import (
    CRoPDForImageClassification,
    CRoPDImageClassifierOutput,
    CRoPDModel,
    CRoPDPreTrainedModel,
    CRoPDPurifierOutput,
    initialize_vit_mae_embeddings,
)

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

__all__ = [
    "CRoPDConfig",
    "CRoPDForImageClassification",
    "CRoPDImageClassifierOutput",
    "CRoPDImageProcessor",
    "CRoPDModel",
    "CRoPDPreTrainedModel",
    "CRoPDPurifierOutput",
    "initialize_vit_mae_embeddings",
]
