"""Tiny models built in the test, saved and loaded through real save_pretrained / from_pretrained."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

# Nothing in a test may reach a network. Set before huggingface_hub is imported: it reads these once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import ViTMAEConfig, ViTMAEModel  # noqa: E402

from cropd_hf import CRoPDConfig, initialize_vit_mae_embeddings  # noqa: E402

# The Space's modules import each other as `python space_app/app.py` runs them: from their own folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "space_app"))

# The Space's tests share their checkpoint, example and offline-Hub fixtures (tests/space_testing.py).
pytest_plugins = ["space_testing"]


@pytest.fixture(scope="session")
def foundation_folder(tmp_path_factory) -> str:
    """A tiny ViTMAEModel saved to a folder: it stands in for facebook/vit-mae-large."""
    torch.manual_seed(0)
    config = ViTMAEConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )
    model = ViTMAEModel(config)
    initialize_vit_mae_embeddings(model)
    folder = tmp_path_factory.mktemp("foundation")
    model.save_pretrained(folder)
    return str(folder)


# The tiny purifier's architecture: in tiny_cropd_config, and in the `model` section of the tests' run files.
TINY_PURIFIER = dict(
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    decoder_hidden_size=16,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=2,
    decoder_intermediate_size=32,
)


def tiny_cropd_config(foundation: str, **overrides) -> CRoPDConfig:
    """A tiny CRoPD config (8x8 grayscale images, 3 classes) in front of the tiny foundation model `foundation`."""
    values = dict(
        image_size=8,
        num_channels=1,
        patch_size=2,
        **TINY_PURIFIER,
        foundation_model_name_or_path=foundation,
        foundation_image_size=16,
        num_labels=3,
    )
    return CRoPDConfig(**{**values, **overrides})


@pytest.fixture
def tiny_config(foundation_folder):
    """Factory of tiny CRoPD configs in front of the session's tiny foundation model."""
    return lambda **overrides: tiny_cropd_config(foundation_folder, **overrides)


# A conv purifier with the input skip and a bounded residual at gain 100 (the learned-binarization recipe, tiny).
BINARIZING_PURIFIER = dict(
    purifier_architecture="conv",
    conv_channels=[4, 8],
    purifier_residual_bound=0.1,
    purifier_residual_gain=100.0,
    purifier_input_skip=True,
)


@torch.no_grad()
def make_it_binarize(purifier: torch.nn.Module) -> None:
    """Make a BINARIZING_PURIFIER read only the pixel itself: g(x) = clip(x + 0.1·tanh(100·(x − 0.5)), 0, 1)."""
    output_layer = purifier.autoencoder.decoder[-1]
    output_layer.weight.zero_()
    output_layer.weight[0, -1, 1, 1] = 1.0
    output_layer.bias.fill_(-0.5)


WITHOUT_CROPD_HF = textwrap.dedent(
    """
    import sys

    sys.modules["cropd_hf"] = None  # `import cropd_hf` now fails, as where the package is not installed
    try:
        import cropd_hf  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("cropd_hf is still importable")
    """
)


def run_without_cropd_hf(script: str, *arguments: str, folder: Path, timeout: float = 300) -> str:
    """Run `script` in a new interpreter where cropd_hf cannot be imported, offline, with its own remote-code cache
    under `folder` (also the working directory); its standard output is returned once it exits 0."""
    path = folder / "without_cropd_hf.py"
    path.write_text(WITHOUT_CROPD_HF + textwrap.dedent(script))
    completed = subprocess.run(
        [sys.executable, str(path), *arguments],
        cwd=folder,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(folder / "modules")},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout
