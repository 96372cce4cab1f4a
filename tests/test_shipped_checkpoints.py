"""Guards on the checkpoints shipped in training/checkpoints: a purifier must purify, and labels must be true.

A checkpoint shipped as a purifier (every one whose model card does not carry the tag `robust-encoder`) must
reconstruct its input: clean PSNR of g(x) against x >= 20 dB on the first 200 test digits. A robust encoder (g(x) is
a code for f, not a picture of x) is allowed only when its card says so and states its PSNR. Forward passes only.
"""

import json
import math
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from cropd_hf import CRoPDForImageClassification
from cropd_hf.data import load_image_dataset, pixel_tensors
from cropd_hf.files import verify_weight_checksums
from cropd_hf.refresh_remote_code import REMOTE_CODE, REQUIRED

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(path.parent for path in (REPO / "training" / "checkpoints").glob("*/config.json"))
PURIFIER_PSNR_FLOOR = 20.0
ROBUST_ENCODER_TAG = "robust-encoder"
NUM_DIGITS = 200


def is_robust_encoder(checkpoint: Path) -> bool:
    return ROBUST_ENCODER_TAG in (ModelCard.load(checkpoint / "README.md").data.tags or [])


@pytest.fixture(scope="module")
def test_digits() -> torch.Tensor:
    from cropd_hf import CRoPDImageProcessor

    processor = CRoPDImageProcessor(size={"height": 28, "width": 28}, num_channels=1)
    return pixel_tensors(load_image_dataset("embedded-mnist")["test"].select(range(NUM_DIGITS)), processor)[0]


def clean_psnr(checkpoint: Path, digits: torch.Tensor) -> float | None:
    model = CRoPDForImageClassification.from_pretrained(checkpoint).eval()
    if model.purifier is None:
        return None
    with torch.no_grad():
        mse = (model.purify(digits) - digits).pow(2).mean().item()
    return 10 * math.log10(1 / mse)


def test_the_default_checkpoint_is_shipped_as_a_purifier():
    default = REPO / "training" / "checkpoints" / "embedded"
    assert default in SHIPPED
    assert not is_robust_encoder(default), "the Space's default checkpoint must be a purifier"


@pytest.mark.parametrize("checkpoint", SHIPPED, ids=[path.name for path in SHIPPED])
@pytest.mark.slow
def test_a_shipped_purifier_reconstructs_its_input(checkpoint, test_digits):
    psnr = clean_psnr(checkpoint, test_digits)
    tags = ModelCard.load(checkpoint / "README.md").data.tags or []
    if psnr is None:  # no purifier at all: it may only be shipped as the undefended classifier, and said so
        assert "undefended" in tags, f"{checkpoint.name} has no purifier: its card must carry the tag `undefended`"
    elif is_robust_encoder(checkpoint):
        card = (checkpoint / "README.md").read_text()
        assert psnr < PURIFIER_PSNR_FLOOR, f"{checkpoint.name} reconstructs (PSNR {psnr:.1f} dB): not an encoder"
        assert f"{psnr:.1f} dB" in card, f"the card of {checkpoint.name} must state its clean PSNR ({psnr:.1f} dB)"
        assert "not a purifier" in card
    else:
        assert psnr >= PURIFIER_PSNR_FLOOR, (
            f"{checkpoint.name} is shipped as a purifier but g(x) is {psnr:.1f} dB from x on {NUM_DIGITS} test "
            f"digits (floor {PURIFIER_PSNR_FLOOR} dB): retrain it, or card it as a robust encoder"
        )


@pytest.mark.parametrize("checkpoint", SHIPPED, ids=[path.name for path in SHIPPED])
def test_the_remote_code_in_a_shipped_checkpoint_is_the_library_s(checkpoint):
    for name in REMOTE_CODE:
        if not (checkpoint / name).exists() and name not in REQUIRED:
            continue
        shipped, library = checkpoint / name, REPO / "cropd_hf" / name
        assert shipped.read_text() == library.read_text(), (
            f"{checkpoint.name}/{name} differs from cropd_hf/{name}: "
            f"regenerate it with `python -m cropd_hf.refresh_remote_code {checkpoint.relative_to(REPO)}`"
        )


@pytest.mark.parametrize("checkpoint", SHIPPED, ids=[path.name for path in SHIPPED])
def test_a_shipped_checkpoint_s_weights_are_the_ones_its_metrics_record(checkpoint):
    recorded = json.loads((checkpoint / "metrics.json").read_text())["weights_sha256"]
    assert set(recorded) >= {"model.safetensors"}
    verify_weight_checksums(checkpoint, recorded)
