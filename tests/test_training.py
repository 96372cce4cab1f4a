"""training/train.py end to end on tiny runs: outputs, two processes, resume, bad run files, safe overwrite."""

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.utils import load as accelerate_load
from conftest import TINY_PURIFIER
from filelock import FileLock
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModelForImageClassification

import cropd_hf  # noqa: F401  (registers the Auto classes)
from cropd_hf.data import EMBEDDED_MNIST, load_image_dataset
from cropd_hf.files import weight_checksums

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "training" / "train.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def write_run_file(path: Path, foundation_folder: str, **overrides) -> Path:
    """A tiny run file based on the embedded default, at `path`."""
    model = {"foundation_model_name_or_path": foundation_folder, **TINY_PURIFIER}
    model_overrides = overrides.pop("model", {})
    # A model section that is not a mapping is passed on as it is: the run file must refuse it.
    model = {**model, **model_overrides} if isinstance(model_overrides, dict) else model_overrides
    values = {
        "base": str(REPO / "training" / "configs" / "embedded.yaml"),
        "purifier_epochs": 2,
        "head_epochs": 1,
        "batch_size": 64,
        "max_train_samples": 256,
        "eval_num_samples": 24,
        "eval_batch_size": 8,
        **overrides,
        "model": model,
    }
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture
def run_file(foundation_folder, tmp_path):
    """Factory of tiny run files based on the embedded default."""

    def make(**overrides) -> Path:
        path = tmp_path / f"tiny-{len(list(tmp_path.glob('tiny-*.yaml')))}.yaml"
        return write_run_file(path, foundation_folder, **overrides)

    return make


def run_train(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TRAIN), *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
@pytest.mark.training
def test_training_writes_a_loadable_checkpoint_metrics_plot_and_model_card(run_file, tmp_path):
    output = tmp_path / "out"
    # Two PGD evaluations (the default run file asks for PGD-10 only): each gets its own metric and card entry.
    config = run_file(report_to="tensorboard", eval_pgd_steps=[10, 20], model={"foundation_pooling": "grid"})
    result = run_train("--config", str(config), "--output_dir", str(output))
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((output / "runs").rglob("events.out.tfevents.*")), "tensorboard logs travel with the model"
    assert re.search(r"purifier epoch 1/2: .*reconstruction_loss", result.stderr)
    assert re.search(r"head epoch 1/1: loss", result.stderr)

    files = {path.name for path in output.iterdir()}
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "metrics.json", "accuracy.png"} <= files
    assert {"README.md", "modeling_cropd.py", "configuration_cropd.py", "image_processing_cropd.py"} <= files
    assert not output.with_name("out.work").exists(), "the per-epoch states are removed after success"
    assert (output / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    metrics = json.loads((output / "metrics.json").read_text())
    assert {"clean", "fgsm", "pgd10", "pgd20", "worst_case", "epsilon", "num_samples", "attacks"} <= set(metrics)
    assert metrics["worst_case"] <= min(metrics["fgsm"], metrics["pgd10"], metrics["pgd20"])
    assert metrics["fidelity"]["clean_psnr_db"] > 0 and metrics["fidelity"]["num_samples"] == 24
    assert metrics["num_samples"] == 24 and metrics["epsilon"] == 0.1
    assert metrics["environment"]["torch"] == torch.__version__ and metrics["environment"]["processes"] == 1
    assert metrics["environment"]["threads_per_process"] >= 1
    # The sha256 of every weight file as published (the foundation's too), for verifying a copy or an upload.
    assert set(metrics["weights_sha256"]) == {"model.safetensors", "foundation/model.safetensors"}
    assert metrics["weights_sha256"] == weight_checksums(output)
    assert re.search(r"trained weights sha256: [0-9a-f]{64}\n", result.stderr)
    assert metrics["attacks"]["pgd20"] == {
        "name": "PGD",
        "eps": 0.1,
        "alpha": 0.0125,  # the evaluator's rule, 2.5·ε/steps: train.py sets no attack of its own
        "steps": 20,
        "restarts": 1,
        "random_start": True,
    }

    # The local foundation model travels inside the checkpoint: a copy anywhere loads and predicts the same.
    assert json.loads((output / "config.json").read_text())["foundation_model_name_or_path"] == "./foundation"
    assert (output / "foundation" / "model.safetensors").is_file()
    elsewhere = tmp_path / "copied" / "checkpoint"
    shutil.copytree(output, elsewhere)
    # The checkpoint alone reproduces the clean accuracy of metrics.json exactly.
    model = AutoModelForImageClassification.from_pretrained(elsewhere).eval()
    processor = AutoImageProcessor.from_pretrained(output)
    test = load_image_dataset(EMBEDDED_MNIST)["test"].select(range(24))
    pixel_values = processor(list(test["image"]), return_tensors="pt").pixel_values
    with torch.no_grad():
        predictions = model(pixel_values).logits.argmax(-1)
    correct = (predictions == torch.tensor(list(test["label"]))).sum().item()
    assert correct / len(test) == metrics["clean"]

    card = ModelCard.load(output / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "image-classification"
    results = {result.metric_args["attack"]: result for result in card.data.eval_results}
    assert results["none"].metric_value == metrics["clean"]
    assert results["pgd20"].metric_value == metrics["pgd20"]
    assert results["pgd20"].metric_args["eps"] == 0.1 and results["pgd20"].metric_args["steps"] == 20
    assert "PGD-20" in results["pgd20"].metric_name and "ε=0.1" in results["pgd20"].metric_name
    assert results["pgd20"].dataset_type == "mnist"
    assert "| foundation features | grid pooling (2x2 grid) |" in card.text
    # One thread (OMP_NUM_THREADS=1), a run file outside the repository: the command names it by its full path.
    assert f"Reproduce with `accelerate launch training/train.py --config {config}`." in card.text


@pytest.mark.parametrize(
    "model", [{"use_purifier": False}, {"contrastive_weight": 0.0}, {"contrastive_features": "purifier"}]
)
@pytest.mark.slow
@pytest.mark.training
def test_baseline_and_ablation_runs_train(run_file, tmp_path, model):
    output = tmp_path / "out"
    result = run_train("--config", str(run_file(model=model, eval_pgd_steps=[2])), "--output_dir", str(output))
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("purifier epoch" in result.stderr) == model.get("use_purifier", True)
    loaded = AutoModelForImageClassification.from_pretrained(output)
    assert (loaded.purifier is not None) == model.get("use_purifier", True)


@pytest.mark.slow
@pytest.mark.training
def test_two_processes_train_with_synchronized_gradients(run_file, tmp_path):
    output = tmp_path / "out"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29513",
        str(TRAIN), "--config", str(run_file(eval_num_samples=23)), "--output_dir", str(output),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    checksums = dict(re.findall(r"\[RANK (\d)\] trained weights sha256: (\S+)", result.stderr))
    # Each rank saw other images; equal weights mean the gradients were averaged across ranks.
    assert set(checksums) == {"0", "1"}
    assert checksums["0"] == checksums["1"]
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["num_samples"] == 23, "the evaluation is gathered once, without duplicated padding samples"
    assert len(re.findall(r"\] head epoch 1/1", result.stderr)) == 1, "only the main process logs epochs"


@pytest.mark.slow
@pytest.mark.training
def test_killed_and_resumed_run_ends_with_the_same_weights(run_file, tmp_path):
    # With augmentation: the resumed run must also draw the same shifts (accelerate restores the RNG states).
    config = str(run_file(purifier_epochs=3, head_epochs=2, max_train_samples=512, augment_max_shift=2))
    reference = tmp_path / "reference"
    assert run_train("--config", config, "--output_dir", str(reference)).returncode == 0

    output = tmp_path / "resumed"
    checkpoints = tmp_path / "resumed.work" / "checkpoints"
    process = subprocess.Popen(
        [sys.executable, str(TRAIN), "--config", config, "--output_dir", str(output)],
        cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (checkpoints / "purifier-epoch-001").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not output.exists(), "killed before the end: no output folder"
    assert not (checkpoints / "head-epoch-002").exists(), "the kill came after the run ended"

    result = run_train("--config", config, "--output_dir", str(output), "--resume_from_checkpoint", "latest")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout
    expected, resumed = load_file(reference / "model.safetensors"), load_file(output / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"purifier_epoch": 3}, "purifier_epoch"),
        ({"batch_size": "64"}, "batch_size"),
        ({"eval_epsilon": 1.5}, "eval_epsilon"),
        ({"model": {"contrastive_weight": -1.0}}, "contrastive_weight"),
        ({"model": {"train_epsilon": 2.0}}, "train_epsilon"),
        ({"model": {"contrastive_wieght": 1.0}}, "model.contrastive_wieght"),
        ({"head_training": "robust"}, "head_training"),
        ({"augment_max_shift": -1}, "augment_max_shift"),
        ({"augment_max_shift": 28}, "augment_max_shift"),
        ({"seed": -1}, "seed"),
        ({"model": ["conv"]}, "model"),
        (
            {"model": {"foundation_model_name_or_path": "training/foundation/missing"}},
            "model.foundation_model_name_or_path",
        ),
    ],
)
def test_a_bad_run_file_stops_before_any_work_naming_the_key(run_file, tmp_path, overrides, key, capsys):
    output = tmp_path / "out"
    # train.py's main in this process (a subprocess per case cost ~12 s of imports; the launcher's own exit code is
    # checked by the empty-run-file test below).
    with pytest.raises(SystemExit) as stopped:
        import_train().main(["--config", str(run_file(**overrides)), "--output_dir", str(output)])
    stderr = capsys.readouterr().err
    assert stopped.value.code == 2
    assert f"'{key}'" in stderr or f"CRoPDConfig.{key}=" in stderr, stderr[-2000:]
    assert "Traceback" not in stderr
    # Refused before any work (not timed: a loaded machine makes a timing flaky): no epoch, no folder.
    assert not re.search(r"(purifier|head) epoch \d", stderr)
    assert not output.exists() and not output.with_name("out.work").exists()


@pytest.mark.slow
@pytest.mark.training
def test_an_existing_output_folder_is_never_half_overwritten(run_file, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("previous run")
    config = str(run_file(max_train_samples=512, purifier_epochs=3))

    refused = run_train("--config", config, "--output_dir", str(output))
    assert refused.returncode == 2 and "--overwrite_output_dir" in refused.stderr
    assert sorted(path.name for path in output.iterdir()) == ["keep.txt"]

    # Killed in the middle of an overwriting run: the old folder is untouched.
    process = subprocess.Popen(
        [sys.executable, str(TRAIN), "--config", config, "--output_dir", str(output), "--overwrite_output_dir"],
        cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (tmp_path / "out.work" / "checkpoints" / "purifier-epoch-001").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert sorted(path.name for path in output.iterdir()) == ["keep.txt"]

    replaced = run_train("--config", config, "--output_dir", str(output), "--overwrite_output_dir")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert not (output / "keep.txt").exists() and (output / "model.safetensors").exists()


def import_train():
    from cropd_hf.training import train

    return train


def test_reproduce_command_names_the_run_file_in_the_repository_the_processes_and_the_cpu_threads():
    train = import_train()
    best = REPO / "training" / "configs" / "embedded-robust-encoder.yaml"
    assert train.reproduce_command(best, cpu_threads=1) == (
        "accelerate launch training/train.py --config training/configs/embedded-robust-encoder.yaml"
    )
    assert train.reproduce_command(best, cpu_threads=2) == (
        "accelerate launch --num_cpu_threads_per_process 2 training/train.py "
        "--config training/configs/embedded-robust-encoder.yaml"
    )
    assert train.reproduce_command(best, cpu_threads=1, num_processes=2) == (
        "accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no "
        "training/train.py --config training/configs/embedded-robust-encoder.yaml"
    )


@pytest.mark.slow
@pytest.mark.training
def test_a_purifier_from_another_run_is_used_unchanged_in_front_of_a_new_head(run_file, tmp_path):
    train = import_train()
    source_file = run_file()
    source = train.build_model(train.load_run_config(source_file), [str(digit) for digit in range(10)])
    torch.manual_seed(1)
    for parameter in source.purifier.parameters():  # weights no fresh model could have
        torch.nn.init.normal_(parameter, std=0.05)
    source.save_pretrained(tmp_path / "source")

    output = tmp_path / "transfer"
    config = run_file(dataset="sklearn-digits", purifier_from=str(tmp_path / "source"), purifier_epochs=0)
    result = run_train("--config", str(config), "--output_dir", str(output))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "purifier epoch" not in result.stderr and "head epoch 1/1" in result.stderr
    transferred = AutoModelForImageClassification.from_pretrained(output)
    for name, tensor in source.purifier.state_dict().items():
        assert torch.equal(transferred.purifier.state_dict()[name], tensor), name

    wider = run_file(purifier_from=str(tmp_path / "source"), model={"hidden_size": 32, "conv_channels": [8, 8]})
    result = run_train("--config", str(wider), "--output_dir", str(tmp_path / "refused"))
    assert result.returncode == 2 and "purifier_from=" in result.stderr and "does not fit" in result.stderr
    assert not (tmp_path / "refused").exists()


def test_resume_picks_the_newest_finished_checkpoint(tmp_path):
    train = import_train()
    checkpoints = tmp_path / "checkpoints"
    for name in ("purifier-epoch-009", "purifier-epoch-010", "head-epoch-001", "head-epoch-002.partial"):
        (checkpoints / name).mkdir(parents=True)
    assert train.latest_checkpoint(tmp_path).name == "head-epoch-001"
    with pytest.raises(train.RunConfigError, match="no checkpoint"):
        train.latest_checkpoint(tmp_path / "elsewhere")


SITECUSTOMIZE = """
import json, os, types
import huggingface_hub

def _record(name):
    def method(self, *args, **kwargs):
        entry = {"call": name, "args": [str(a) for a in args], "kwargs": {k: str(v) for k, v in kwargs.items()}}
        if "folder_path" in kwargs:  # a temporary folder: what it holds is known only during the call
            entry["files"] = sorted(os.listdir(kwargs["folder_path"]))
        with open(os.environ["CROPD_TEST_HUB_CALLS"], "a") as log:
            log.write(json.dumps(entry) + "\\n")
        return types.SimpleNamespace(commit_url="https://huggingface.co/org/cropd-tiny/commit/0")
    return method

# No network here: record what would have been sent to the Hub instead of sending it.
huggingface_hub.HfApi.whoami = lambda self, *args, **kwargs: {"name": "org", "orgs": []}
huggingface_hub.HfApi.create_repo = _record("create_repo")
huggingface_hub.HfApi.upload_folder = _record("upload_folder")
"""


@pytest.mark.slow
@pytest.mark.training
def test_push_to_hub_uploads_the_output_folder_with_a_hub_foundation_model(run_file, foundation_folder, tmp_path):
    # The foundation model as a Hub id, served from a local Hub cache (the real from_pretrained path, offline).
    snapshot = tmp_path / "hub" / "models--org--tiny-vit-mae" / "snapshots" / ("0" * 40)
    shutil.copytree(foundation_folder, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    calls = tmp_path / "hub-calls.jsonl"
    env = {
        **ENV,
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "PYTHONPATH": str(tmp_path / "site"),
        "CROPD_TEST_HUB_CALLS": str(calls),
    }
    output = tmp_path / "out"
    config = run_file(model={"foundation_model_name_or_path": "org/tiny-vit-mae"})
    result = subprocess.run(
        [sys.executable, str(TRAIN), "--config", str(config), "--output_dir", str(output), "--push_to_hub",
         "--hub_model_id", "org/cropd-tiny"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    recorded = [json.loads(line) for line in calls.read_text().splitlines()]
    assert [call["call"] for call in recorded] == ["create_repo", "upload_folder"]
    assert recorded[1]["kwargs"]["repo_id"] == "org/cropd-tiny"
    assert recorded[1]["files"] == sorted(os.listdir(output)), "the checked copy of the output folder"

    config_json = json.loads((output / "config.json").read_text())
    assert config_json["foundation_model_name_or_path"] == "org/tiny-vit-mae"
    assert "robust-image-classification" in config_json["custom_pipelines"]
    assert {"pipeline_cropd.py", "attacks.py", "modeling_cropd.py"} <= {path.name for path in output.iterdir()}
    assert ModelCard.load(output / "README.md").data.base_model == "org/tiny-vit-mae"


@pytest.fixture(scope="session")
def kept_states(foundation_folder, tmp_path_factory) -> tuple[Path, Path]:
    """One tiny run (one purifier epoch, one head epoch) that keeps its per-epoch states: its run file and its
    purifier-epoch-001 state, shared by the resume tests (which change only copies of it) and made once per session,
    also when pytest-xdist's workers share the tests (in the session's temporary folder, under a lock)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the session's folder, shared by the workers
        root = root.parent
    folder, config = root / "kept-states", root / "kept-states" / "tiny.yaml"
    with FileLock(str(root / "kept-states.lock")):
        if not (folder / "first" / "metrics.json").is_file():
            folder.mkdir(exist_ok=True)
            write_run_file(config, foundation_folder, purifier_epochs=1, head_epochs=1, eval_pgd_steps=[1])
            result = run_train("--config", str(config), "--output_dir", str(folder / "first"), "--keep_checkpoints")
            assert result.returncode == 0, result.stderr[-3000:]
    return config, folder / "first.work" / "checkpoints" / "purifier-epoch-001"


def copied_state(kept_states: tuple[Path, Path], tmp_path: Path) -> Path:
    state = tmp_path / "state" / kept_states[1].name
    shutil.copytree(kept_states[1], state)
    return state


def resume_in_process(config: Path, state: Path, output: Path, capsys) -> tuple[int, str]:
    """train.py's main in this process resuming from `state`: its exit code and stderr, as on the command line (an
    exception that escapes main is a traceback and exit code 1)."""
    code, crash = 0, ""
    try:
        import_train().main(
            ["--config", str(config), "--output_dir", str(output), "--resume_from_checkpoint", str(state)]
        )
    except SystemExit as stopped:
        code = stopped.code
    except Exception:
        code, crash = 1, traceback.format_exc()
    return code, capsys.readouterr().err + crash


class CodeOnUnpickle:
    """Pickled, it is a call of os.system that creates `marker`: unpickling it without restrictions runs that code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
@pytest.mark.training
def test_a_checkpoint_folder_with_a_pickle_is_refused_and_never_unpickled(kept_states, tmp_path, capsys):
    # A real state plus the file accelerate unpickles with weights_only=False (train.py registers no such object).
    state = copied_state(kept_states, tmp_path)
    marker = tmp_path / "code-ran"
    with (state / "custom_checkpoint_0.pkl").open("wb") as file:
        pickle.dump(CodeOnUnpickle(marker), file)
    output = tmp_path / "out"
    code, stderr = resume_in_process(kept_states[0], state, output, capsys)
    assert not marker.exists(), "the crafted pickle ran code"
    assert code == 2, stderr[-3000:]
    assert "custom_checkpoint_0.pkl" in stderr and "pickle" in stderr
    assert "Traceback" not in stderr
    assert not output.exists() and not (tmp_path / "out.work" / "checkpoints").exists(), "refused before any epoch"


@pytest.mark.parametrize("name", ["optimizer.bin", "scheduler.bin", "random_states_0.pkl"])
@pytest.mark.slow
@pytest.mark.training
def test_a_state_file_holding_code_is_refused_naming_it_and_never_unpickled(kept_states, tmp_path, capsys, name):
    # torch.save of an object whose unpickling runs code: accelerate's loader (weights_only=True) fails on it, and
    # for the random states it only logs that at INFO and trains on with other random numbers.
    state = copied_state(kept_states, tmp_path)
    marker = tmp_path / "code-ran"
    torch.save(CodeOnUnpickle(marker), state / name)
    output = tmp_path / "out"
    code, stderr = resume_in_process(kept_states[0], state, output, capsys)
    assert not marker.exists(), "the crafted file ran code"
    assert code == 2, stderr[-3000:]
    assert f"refused, {name} holds objects other than tensors" in stderr
    assert f"Delete {state}" in stderr and "start the run again" in stderr
    assert "Traceback" not in stderr
    assert not output.exists() and not (tmp_path / "out.work" / "checkpoints").exists(), "refused before any epoch"


def _unrestorable_random_states(state: Path) -> None:
    states = accelerate_load(state / "random_states_0.pkl", weights_only=True)
    torch.save({**states, "torch_manual_seed": torch.zeros(3, dtype=torch.uint8)}, state / "random_states_0.pkl")


WRONG_STATE_FILES = {
    # The purifier's optimizer state where the head's belongs: it loads, but is not the head optimizer's.
    "optimizer_1.bin": (
        lambda state: shutil.copyfile(state / "optimizer.bin", state / "optimizer_1.bin"),
        "does not have the optimizer's parameters",
    ),
    "scheduler_1.bin": (lambda state: (state / "scheduler_1.bin").unlink(), "is missing"),
    "random_states_0.pkl": (_unrestorable_random_states, "holds random states that cannot be restored"),
}


@pytest.mark.parametrize("name", WRONG_STATE_FILES)
@pytest.mark.slow
@pytest.mark.training
def test_a_state_file_that_is_missing_or_not_what_train_py_wrote_is_refused_naming_it(
    kept_states, tmp_path, capsys, name
):
    change, problem = WRONG_STATE_FILES[name]
    state = copied_state(kept_states, tmp_path)
    change(state)
    output = tmp_path / "out"
    code, stderr = resume_in_process(kept_states[0], state, output, capsys)
    assert code == 2, stderr[-3000:]
    assert f"refused, {name} {problem}" in stderr and f"Delete {state}" in stderr
    assert "Traceback" not in stderr
    assert not output.exists() and not (tmp_path / "out.work" / "checkpoints").exists(), "refused before any epoch"


@pytest.mark.slow
@pytest.mark.training
def test_resume_refuses_a_changed_run_file_unless_allowed_and_records_it(kept_states, tmp_path):
    config, checkpoint = kept_states
    assert not list(checkpoint.glob("custom_checkpoint_*")), "progress is stored as JSON, not as a pickle"
    saved = json.loads((checkpoint / "training_progress.json").read_text())
    assert saved["epochs_done"]["purifier"] == 1 and saved["settings"]["seed"] == 0

    changed = tmp_path / "changed.yaml"
    values = yaml.safe_load(config.read_text())
    changed.write_text(yaml.safe_dump({**values, "seed": 1, "head_learning_rate": 0.1}))
    resume = ("--config", str(changed), "--resume_from_checkpoint", str(checkpoint))
    refused = run_train(*resume, "--output_dir", str(tmp_path / "refused"))
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "seed: 0 -> 1" in refused.stderr and "head_learning_rate" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "refused").exists()

    allowed = run_train(*resume, "--output_dir", str(tmp_path / "allowed"), "--allow_changed_settings")
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    metrics = json.loads((tmp_path / "allowed" / "metrics.json").read_text())
    assert metrics["resumed_with_changed_settings"] == ["head_learning_rate", "seed"]


@pytest.mark.slow
def test_a_run_without_a_single_training_step_is_refused(run_file, tmp_path):
    output = tmp_path / "out"
    result = run_train("--config", str(run_file(max_train_samples=10, batch_size=64)), "--output_dir", str(output))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "batch_size: 64" in result.stderr and "10 training images" in result.stderr
    assert "Traceback" not in result.stderr and not output.exists()
    assert not re.search(r"(purifier|head) epoch \d", result.stderr)


def test_an_unwritable_output_folder_is_refused_before_any_work(run_file, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as stopped:  # refused before any work: main in this process
        import_train().main(["--config", str(run_file()), "--output_dir", str(blocker / "out")])
    stderr = capsys.readouterr().err
    assert stopped.value.code == 2, stderr[-3000:]
    assert "cannot be written" in stderr and str(blocker) in stderr
    assert "Traceback" not in stderr
    assert not re.search(r"(purifier|head) epoch \d", stderr)


@pytest.mark.slow
@pytest.mark.training
def test_every_purifier_epoch_logs_the_held_out_psnr_and_a_warning_below_the_floor(run_file, tmp_path):
    output = tmp_path / "out"
    config = run_file(
        validation_size=64, reconstruction_epochs=1, purifier_epochs=1, head_epochs=1, min_purifier_psnr=99.0
    )
    result = run_train("--config", str(config), "--output_dir", str(output))
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"reconstruction epoch 1/1: .*validation_psnr_db \d", result.stderr)
    assert re.search(r"purifier epoch 1/1: .*validation_psnr_db \d", result.stderr)
    assert "below min_purifier_psnr = 99.0 dB" in result.stderr
    log = json.loads((output / "metrics.json").read_text())["purifier_fidelity_per_epoch"]
    assert [(entry["stage"], entry["epoch"]) for entry in log] == [("reconstruction", 1), ("purifier", 1)]
    assert all(entry["split"] == "validation" and entry["validation_psnr_db"] > 0 for entry in log)


@pytest.mark.slow
def test_an_empty_run_file_and_a_too_large_validation_split_are_refused_naming_what_is_wrong(run_file, tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing but a comment\n")
    result = run_train("--config", str(empty), "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 2 and "the run file is empty" in result.stderr
    assert "Traceback" not in result.stderr

    result = run_train("--config", str(run_file(validation_size=5000)), "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "'validation_size'" in result.stderr and "5000" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_run_files_resolve_their_repository_paths_from_any_working_directory(tmp_path, monkeypatch):
    train = import_train()
    monkeypatch.chdir(tmp_path)
    run = train.load_run_config(REPO / "training" / "configs" / "embedded.yaml")
    foundation = Path(run.model["foundation_model_name_or_path"])
    assert foundation.is_absolute() and (foundation / "config.json").is_file()
    assert foundation == REPO / "training" / "foundation" / "embedded-vit-mae"
    purifier_run = train.load_run_config(REPO / "training" / "configs" / "fidelity" / "embedded-mixed-head.yaml")
    assert Path(train.resolve_local_path(purifier_run.purifier_from)) == REPO / "training" / "checkpoints" / "embedded"
