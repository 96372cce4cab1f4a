"""What the Space's tests share: a tiny CRoPD checkpoint, a gallery example and an offline Hub.

A pytest plugin (conftest.py lists it in `pytest_plugins`) for tests/test_space_app.py (the app's functions in this
process) and tests/test_space_server.py (the app served on a local port, a client and headless Chromium); they
import its constants. space_app/ is on the path through conftest.py.
"""

from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from conftest import tiny_cropd_config

from cropd_hf import CRoPDForImageClassification, CRoPDImageProcessor

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "space_app"
LABELS = {0: "zero", 1: "one", 2: "two"}
PURIFIER = "CRoPD purifier (faithful: g(x) looks like x)"
ROBUST_ENCODER = "Robust encoder (not a purifier: g(x) is a code for f, not an image of the digit)"


@pytest.fixture
def hub_offline(monkeypatch):
    """The app's default models are Hub ids: in this process too, the Hub is offline (conftest.py sets
    HF_HUB_OFFLINE after huggingface_hub has read it), so loading one fails at once, with no network request."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def save_checkpoint(folder: Path, foundation: str, **overrides: object) -> Path:
    """A tiny CRoPD checkpoint (8x8 grayscale, 3 named classes), as tests/conftest.py's tiny_config builds one."""
    torch.manual_seed(0)
    config = tiny_cropd_config(
        foundation,
        id2label=LABELS,
        label2id={name: index for index, name in LABELS.items()},
        train_epsilon=0.1,
        **overrides,
    )
    CRoPDForImageClassification(config).save_pretrained(folder)
    CRoPDImageProcessor(size={"height": 8, "width": 8}, num_channels=1).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(foundation_folder, tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("space") / "checkpoint", foundation_folder)


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> str:
    """The gallery's first example, made by the app's own code."""
    import app as space  # only the Space's tests pay for importing gradio

    path, caption = space.load_examples("sklearn-digits", tmp_path_factory.mktemp("examples"))[0]
    assert Path(path).name == "sklearn-digits-test-00.png" and caption.startswith("test #0: ")
    return path
