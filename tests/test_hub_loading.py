"""Checkpoints through real save_pretrained / from_pretrained, in-package and with trust_remote_code."""

import json
import os
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_without_cropd_hf
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

from cropd_hf import CRoPDForImageClassification, CRoPDImageProcessor, CRoPDModel

REMOTE_CODE_FILES = {"configuration_cropd.py", "checks.py", "modeling_cropd.py", "image_processing_cropd.py"}


@pytest.fixture
def checkpoint(tiny_config, tmp_path):
    torch.manual_seed(0)
    model = CRoPDForImageClassification(tiny_config()).eval()
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    CRoPDImageProcessor(size={"height": 8, "width": 8}, num_channels=1).save_pretrained(folder)
    return model, folder


def test_checkpoint_folder_holds_g_and_h_only_as_safetensors(checkpoint):
    model, folder = checkpoint
    files = {path.name for path in folder.iterdir()}
    assert {"model.safetensors", "config.json", "preprocessor_config.json"} | REMOTE_CODE_FILES <= files
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]

    with safe_open(folder / "model.safetensors", "pt") as weights:
        keys = set(weights.keys())
    assert not [key for key in keys if key.startswith("foundation")]
    # transformers may write ViT-MAE layers under their legacy names, so compare what is stored, not the names.
    parts = ("purifier", "feature_norm", "classifier")
    assert {key.split(".")[0] for key in keys} == set(parts)
    assert len(keys) == sum(len(getattr(model, part).state_dict()) for part in parts)

    g_and_h_bytes = sum(t.numel() * t.element_size() for t in load_file(folder / "model.safetensors").values())
    foundation_bytes = sum(t.numel() * t.element_size() for t in model.foundation.state_dict().values())
    size = (folder / "model.safetensors").stat().st_size
    assert g_and_h_bytes <= size < g_and_h_bytes + 16_384 < g_and_h_bytes + foundation_bytes

    config = json.loads((folder / "config.json").read_text())
    assert config["foundation_model_name_or_path"] == model.config.foundation_model_name_or_path
    assert config["model_type"] == "cropd"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_cropd.CRoPDConfig",
        "AutoModel": "modeling_cropd.CRoPDModel",
        "AutoModelForImageClassification": "modeling_cropd.CRoPDForImageClassification",
    }


def test_round_trip_through_the_auto_classes_gives_identical_outputs(checkpoint):
    model, folder = checkpoint
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))

    assert type(AutoConfig.from_pretrained(folder)).__name__ == "CRoPDConfig"
    loaded = AutoModelForImageClassification.from_pretrained(folder).eval()
    assert isinstance(loaded, CRoPDForImageClassification)
    assert torch.equal(loaded(x).logits, model(x).logits)
    for name, tensor in model.foundation.state_dict().items():
        assert torch.equal(loaded.foundation.state_dict()[name], tensor), name
    assert not any(p.requires_grad for p in loaded.foundation.parameters())

    purifier = AutoModel.from_pretrained(folder).eval()
    assert isinstance(purifier, CRoPDModel)
    assert torch.equal(purifier(x).reconstruction, model.purifier(x).reconstruction)

    processor = AutoImageProcessor.from_pretrained(folder)
    assert isinstance(processor, CRoPDImageProcessor)
    image = Image.fromarray((np.arange(64).reshape(8, 8) * 4).astype(np.uint8))
    pixel_values = processor(image, return_tensors="pt").pixel_values
    assert pixel_values.shape == (1, 1, 8, 8)
    assert torch.isfinite(loaded(pixel_values).logits).all()


def test_a_purifier_checkpoint_loads_into_the_classifier(tiny_config, tmp_path):
    purifier = CRoPDModel(tiny_config()).eval()
    purifier.save_pretrained(tmp_path)
    model = CRoPDForImageClassification.from_pretrained(tmp_path).eval()
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(model.purify(x), purifier(x).reconstruction)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

    folder, inputs_file, outputs_file = sys.argv[1:]
    x = load_file(inputs_file)["x"]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    purifier = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    classes = [type(o) for o in (config, model, purifier, processor)]
    assert all(c.__module__.startswith("transformers_modules.") for c in classes), classes
    print(" ".join(c.__name__ for c in classes))
    image = (x[0, 0] * 255).round().to(torch.uint8).numpy()
    save_file(
        {
            "logits": model(x).logits.contiguous(),
            "reconstruction": purifier(x).reconstruction.contiguous(),
            "pixel_values": processor(image, return_tensors="pt").pixel_values,
        },
        outputs_file,
    )
    """
)


@pytest.mark.slow
def test_trust_remote_code_without_the_package(checkpoint, tmp_path):
    model, folder = checkpoint
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    save_file({"x": x}, tmp_path / "inputs.safetensors")
    output = run_without_cropd_hf(
        REMOTE_SCRIPT,
        str(folder),
        str(tmp_path / "inputs.safetensors"),
        str(tmp_path / "out.safetensors"),
        folder=tmp_path,
    )
    assert "CRoPDConfig CRoPDForImageClassification CRoPDModel CRoPDImageProcessor" in output
    outputs = load_file(tmp_path / "out.safetensors")
    assert torch.equal(outputs["logits"], model(x).logits)
    assert torch.equal(outputs["reconstruction"], model.purifier(x).reconstruction)
    expected = CRoPDImageProcessor(size={"height": 8, "width": 8}, num_channels=1)(
        (x[0, 0] * 255).round().to(torch.uint8).numpy(), return_tensors="pt"
    ).pixel_values
    assert torch.equal(outputs["pixel_values"], expected)


def test_remote_code_files_are_self_contained():
    package = Path(__file__).resolve().parents[1] / "cropd_hf"
    for name in REMOTE_CODE_FILES:
        lines = [line.strip() for line in (package / name).read_text().splitlines()]
        imports = [line for line in lines if line.startswith(("import ", "from ")) and ">>>" not in line]
        assert not [line for line in imports if "cropd_hf" in line], name
        local = [line for line in imports if line.startswith("from .")]
        assert all(line.split()[1].lstrip(".") + ".py" in REMOTE_CODE_FILES for line in local), local


def test_a_relative_foundation_path_is_relative_to_the_checkpoint_folder(tiny_config, foundation_folder, tmp_path):
    shipped = tmp_path / "shipped"
    shutil.copytree(foundation_folder, shipped / "foundation")
    model = CRoPDForImageClassification(tiny_config()).eval()
    model.config.foundation_model_name_or_path = "../foundation"
    model.save_pretrained(shipped / "checkpoint")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cwd = os.getcwd()
    os.chdir(elsewhere)
    try:
        loaded = AutoModelForImageClassification.from_pretrained(shipped / "checkpoint").eval()
    finally:
        os.chdir(cwd)
    assert loaded.foundation_location() == str(shipped / "foundation")
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(loaded(x).logits, model(x).logits)
