"""What transformers users expect of a model and a pipeline: tuple outputs, hidden states, one host sync per forward
pass, image paths and URLs read by transformers' `load_image`."""

import io
import re
from types import SimpleNamespace

import huggingface_hub.constants
import numpy as np
import pytest
import torch
import transformers.image_utils
from PIL import Image
from transformers import pipeline

import cropd_hf.pipeline_cropd as pipeline_module
from cropd_hf import CRoPDForImageClassification, CRoPDImageProcessor

FOUNDATION_LAYERS = 2  # tests/conftest.py's tiny foundation model
FOUNDATION_WIDTH = 32


@pytest.fixture
def model(tiny_config):
    torch.manual_seed(0)
    return CRoPDForImageClassification(tiny_config()).eval()


def images_and_labels() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(4, 1, 8, 8, generator=generator), torch.tensor([0, 1, 2, 1])


def test_return_dict_false_gives_the_outputs_as_a_tuple(model):
    x, y = images_and_labels()
    with torch.no_grad():
        full = model(x, labels=y)
        loss, logits, features, purified = model(x, labels=y, return_dict=False)
        logits_only, *_ = model(x, return_dict=False)
        reconstruction, pooled, last_hidden_state = model.purifier(x, return_dict=False)
        model.config.return_dict = False
        from_config = model(x)
    for got, expected in (
        (loss, full.loss),
        (logits, full.logits),
        (features, full.features),
        (purified, full.purified_pixel_values),
        (logits_only, full.logits),
        (reconstruction, full.purified_pixel_values),
        (from_config[0], full.logits),
    ):
        torch.testing.assert_close(got, expected)
    assert isinstance(from_config, tuple)
    assert pooled.shape == (4, 16) and last_hidden_state.shape == (4, 17, 16)


def test_output_hidden_states_gives_the_foundation_model_s_hidden_states(model, tiny_config):
    x, _ = images_and_labels()
    with torch.no_grad():
        plain = model(x)
        output = model(x, output_hidden_states=True)
        without_purifier = model(x, purify=False, output_hidden_states=True)
    assert plain.hidden_states is None
    torch.testing.assert_close(output.logits, plain.logits)
    # f's embeddings and each of its layers, at f's width (the purifier's is 16): 16 patches of 4x4 and the CLS.
    assert len(output.hidden_states) == FOUNDATION_LAYERS + 1
    assert all(hidden.shape == (4, 17, FOUNDATION_WIDTH) for hidden in output.hidden_states)
    # f saw g(x) in one case, x in the other.
    assert not torch.allclose(output.hidden_states[0], without_purifier.hidden_states[0])

    model.config.output_hidden_states = True
    with torch.no_grad():
        assert len(model(x).hidden_states) == FOUNDATION_LAYERS + 1
        purifier = model.purifier(x, output_hidden_states=True)
    assert len(purifier.hidden_states) == model.config.num_hidden_layers + 1
    assert purifier.hidden_states[-1].shape == (4, 17, 16)

    conv = CRoPDForImageClassification(tiny_config(purifier_architecture="conv", conv_channels=[4, 8])).eval()
    with torch.no_grad():
        maps = conv.purifier(x, output_hidden_states=True).hidden_states
    assert [tuple(feature_map.shape) for feature_map in maps] == [(4, 4, 8, 8), (4, 8, 4, 4)]


HOST_SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")


def count_host_syncs(monkeypatch) -> list[str]:
    """Every tensor-to-Python conversion from now on (each one waits for the device), by name."""
    calls: list[str] = []
    for name in HOST_SYNCS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


def test_a_forward_pass_waits_for_the_device_once_and_still_names_bad_inputs(model, monkeypatch):
    x, y = images_and_labels()
    syncs = count_host_syncs(monkeypatch)
    with torch.no_grad():
        model(x, labels=y)
    assert syncs == ["tolist"], "pixels and labels are checked together, once, not again inside the purifier"
    syncs.clear()
    with torch.no_grad():
        model.purifier(x)
        model(x, purify=False)
    assert syncs == ["tolist", "tolist"]

    for pixels, labels, message in (
        (x, torch.tensor([0, 1, 2, 3]), "labels must be class indices in [0, 3); got values in [0, 3]."),
        (x, torch.tensor([-1, 0, 0, 0]), "labels must be class indices in [0, 3); got values in [-1, 0]."),
        (x * 2, y, "with values in [0, 1]"),
        (x, y[:2], "labels must have shape (4,)"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            model(pixels, labels=labels)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_paths_and_urls_are_read_by_transformers_load_image(model, tmp_path, monkeypatch):
    robust = pipeline(
        "robust-image-classification",
        model=model,
        image_processor=CRoPDImageProcessor(size={"height": 8, "width": 8}, num_channels=1),
    )
    digit = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    (tmp_path / "digit.png").write_bytes(png_bytes(digit))
    loaded = []

    def spy(image, timeout=None):
        loaded.append(image)
        return transformers.image_utils.load_image(image, timeout=timeout)

    monkeypatch.setattr(pipeline_module, "load_image", spy, raising=False)
    fetched = []

    def get(url, timeout=None, follow_redirects=False):  # the network, answered here
        fetched.append(url)
        return SimpleNamespace(content=png_bytes(digit))

    monkeypatch.setattr(transformers.image_utils, "httpx", SimpleNamespace(get=get))
    expected = robust(digit, top_k=3)["clean"]

    assert robust(str(tmp_path / "digit.png"), top_k=3)["clean"] == pytest.approx(expected)
    assert loaded == [str(tmp_path / "digit.png")]

    # Offline mode (tests/conftest.py sets HF_HUB_OFFLINE=1): a URL is refused, nothing is fetched.
    url = "https://images.example/digit.png"
    with pytest.raises(ValueError, match=re.escape("offline mode (HF_HUB_OFFLINE=1) allows no network request")):
        robust(url)
    assert fetched == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert robust(url, top_k=3)["clean"] == pytest.approx(expected)
    assert fetched == [url] and loaded[-1] == url

    # A 16-bit file is not squeezed through load_image's 8-bit RGB: the processor reads all its levels.
    deep = (digit.astype(np.uint16) * 257 + 128).astype(np.uint16)
    (tmp_path / "deep.png").write_bytes(png_bytes(deep))
    pixels = robust.preprocess(str(tmp_path / "deep.png"))["pixel_values"]
    torch.testing.assert_close(pixels[0, 0], torch.from_numpy(deep / 65535).float())
