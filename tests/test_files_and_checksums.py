"""cropd_hf.files and its users: atomic writes, folders replaced in two recoverable renames, sha256 of weight files
checked on resume, and a damaged `cropd-eval --resume` state refused with a clear message."""

import errno
import hashlib
import json
import logging
import os
from pathlib import Path

import pytest
import torch
from conftest import tiny_cropd_config
from datasets import Dataset

from cropd_hf import CRoPDForImageClassification, CRoPDImageProcessor
from cropd_hf.data import SKLEARN_DIGITS
from cropd_hf.evaluation import EvaluationReport, EvaluationSettings, evaluate_model
from cropd_hf.evaluation import main as evaluate_main
from cropd_hf.evaluation.runner import ResumeStateError
from cropd_hf.files import (
    InterruptedReplaceError,
    check_no_interrupted_replace,
    fsync_tree,
    replace_folder,
    tensors_sha256,
    verify_weight_checksums,
    weight_checksums,
    write_text_atomically,
)
from cropd_hf.training import train
from cropd_hf.training.run_config import load_run_config


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _inode(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_dev, stat.st_ino


@pytest.fixture
def fsynced(monkeypatch) -> list[tuple[int, int]]:
    """The (device, inode) of everything passed to os.fsync, in order."""
    calls: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def recording_fsync(descriptor: int) -> None:
        stat = os.fstat(descriptor)
        calls.append((stat.st_dev, stat.st_ino))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return calls


# ----------------------------------------------------------------------------------------------------------------
# Atomic writes


def _write_progress(path: Path) -> None:
    train.TrainingProgress({"seed": 0}).save(path.parent)


WRITERS = {
    "write_text_atomically": (lambda path: write_text_atomically(path, "new content\n"), "state.txt"),
    "training_progress.json": (_write_progress, train.TrainingProgress.FILE),
    "eval.json": (lambda path: EvaluationReport(EvaluationSettings(), []).save(path), "eval.json"),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_a_write_failing_midway_leaves_the_old_content_and_no_temporary_file(writer, tmp_path, monkeypatch):
    write, name = WRITERS[writer]
    path = tmp_path / name
    path.write_text("old content\n")

    def disk_full(descriptor: int) -> None:  # delayed allocation: a full disk shows when the data is flushed
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write(path)
    assert path.read_text() == "old content\n"
    assert [child.name for child in tmp_path.iterdir()] == [name], "no temporary file is left behind"


@pytest.mark.parametrize("writer", WRITERS)
def test_a_write_is_flushed_to_disk_before_and_after_its_rename(writer, tmp_path, fsynced):
    write, name = WRITERS[writer]
    path = tmp_path / name
    write(path)
    # The data before the rename (else a crash can leave an empty file under the new name), the folder after it.
    assert fsynced[-2:] == [_inode(path), _inode(tmp_path)]
    plain = tmp_path / "plain.txt"
    plain.write_text("")
    assert path.stat().st_mode == plain.stat().st_mode, "the umask decides the mode, as for a plain write"


def test_write_text_atomically_writes_the_text_exactly(tmp_path):
    # Line endings as given (a model card keeps its own), UTF-8 whatever the locale; an existing file replaced.
    path = tmp_path / "README.md"
    path.write_text("old card, longer than the new one\n" * 10)
    text = "---\r\nlicense: mit\r\n---\nε = 8/255, ‖g(x) − x‖²\n"
    write_text_atomically(path, text)
    assert path.read_bytes() == text.encode("utf-8")


def test_fsync_tree_flushes_every_file_and_folder(tmp_path, fsynced):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for path in (tmp_path / "top.json", tmp_path / "a" / "x.bin", tmp_path / "a" / "b" / "y.safetensors"):
        path.write_bytes(b"data")
    fsync_tree(tmp_path)
    assert set(fsynced) == {_inode(path) for path in (tmp_path, *tmp_path.rglob("*"))}


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names an fsynced descriptor through /proc")
@pytest.mark.parametrize("previous", [False, True], ids=["new", "replacing"])
def test_replace_folder_flushes_every_file_and_folder_it_publishes_then_the_parent(tmp_path, monkeypatch, previous):
    # What a checkpoint or an output folder holds: files at several depths, the local foundation in a subfolder.
    staging, target = tmp_path / "out.work" / "output", tmp_path / "out"
    for name in ("model.safetensors", "config.json", "foundation/model.safetensors", "runs/tiny/events.out"):
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_text(name)
    if previous:
        target.mkdir()
        (target / "model.safetensors").write_text("previous run")
    events: list[tuple[str, ...]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def recording_fsync(descriptor: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    def recording_replace(source, destination) -> None:
        events.append(("rename", str(Path(source).resolve()), str(Path(destination).resolve())))
        real_replace(source, destination)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    replace_folder(staging, target)

    published = [target, *target.rglob("*")]
    assert len(published) == 8 and (target / "model.safetensors").read_text() == "model.safetensors"
    publishing = events.index(("rename", str(staging.resolve()), str(target.resolve())))
    # Every file and folder before the rename that publishes them (under the names they had until then) ...
    flushed_before = {event[1] for event in events[:publishing] if event[0] == "fsync"}
    missing = {str(staging.resolve() / path.relative_to(target)) for path in published} - flushed_before
    assert not missing, f"published without an fsync: {sorted(missing)}"
    # ... and the folder holding the new name after it, before replace_folder returns.
    assert ("fsync", str(tmp_path.resolve())) in events[publishing + 1 :]


# ----------------------------------------------------------------------------------------------------------------
# Weight checksums


def test_weight_checksums_cover_every_safetensors_file_by_relative_path(tmp_path):
    (tmp_path / "foundation").mkdir()
    big = os.urandom(3 * 2**20 + 17)  # read in chunks: larger than one chunk, not a multiple of it
    (tmp_path / "model.safetensors").write_bytes(big)
    (tmp_path / "foundation" / "model.safetensors").write_bytes(b"foundation")
    (tmp_path / "optimizer.bin").write_bytes(b"not a weight file")
    assert weight_checksums(tmp_path) == {
        "model.safetensors": hashlib.sha256(big).hexdigest(),
        "foundation/model.safetensors": hashlib.sha256(b"foundation").hexdigest(),
    }


def test_verify_weight_checksums_names_the_file_and_both_digests(tmp_path):
    (tmp_path / "foundation").mkdir()
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "foundation" / "model.safetensors").write_bytes(b"foundation")
    recorded = weight_checksums(tmp_path)
    verify_weight_checksums(tmp_path, recorded)

    (tmp_path / "model.safetensors").write_bytes(b"weightz")
    with pytest.raises(ValueError) as mismatch:
        verify_weight_checksums(tmp_path, recorded)
    assert str(mismatch.value).startswith(f"weight files under {tmp_path} do not match their recorded checksums")
    found = _sha256(tmp_path / "model.safetensors")
    assert f"model.safetensors has changed (recorded sha256 {recorded['model.safetensors']}, found {found})" in str(
        mismatch.value
    )

    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "foundation" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="foundation/model.safetensors is missing"):
        verify_weight_checksums(tmp_path, recorded)

    (tmp_path / "foundation" / "model.safetensors").write_bytes(b"foundation")
    (tmp_path / "extra.safetensors").write_bytes(b"smuggled")
    with pytest.raises(ValueError, match="extra.safetensors is not among the recorded weight files"):
        verify_weight_checksums(tmp_path, recorded)

    with pytest.raises(ValueError, match="expected=.*dict of relative file path -> sha256"):
        verify_weight_checksums(tmp_path, ["model.safetensors"])


def test_tensors_sha256_changes_with_a_single_bit_of_one_weight():
    # What every training process logs: equal digests must mean bit-identical trained weights.
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    copy = torch.nn.Linear(3, 2)
    copy.load_state_dict(model.state_dict())
    assert tensors_sha256(dict(model.named_parameters())) == tensors_sha256(dict(copy.named_parameters()))
    with torch.no_grad():
        copy.bias[0] = torch.nextafter(copy.bias[0], torch.tensor(1.0))
    assert tensors_sha256(dict(model.named_parameters())) != tensors_sha256(dict(copy.named_parameters()))


def test_resume_refuses_a_state_whose_weight_file_changed_since_it_was_saved(tmp_path, caplog):
    from accelerate import Accelerator

    # A tiny model and optimizer prepared by accelerate, saved by train.py's save_checkpoint as in a run.
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 3)
    accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=0.1))
    progress = train.TrainingProgress({"seed": 0})
    progress.epochs_done["purifier"] = 1
    train.save_checkpoint(accelerator, tmp_path, "purifier", 1, progress)
    checkpoint = tmp_path / "checkpoints" / "purifier-epoch-001"
    weights = checkpoint / "model.safetensors"
    saved = json.loads((checkpoint / train.TrainingProgress.FILE).read_text())
    assert saved["weights_sha256"] == {"model.safetensors": _sha256(weights)}

    resumed = train.TrainingProgress({"seed": 0})
    assert resumed.load(checkpoint, allow_changed_settings=False) == []
    assert resumed.epochs_done["purifier"] == 1

    recorded = _sha256(weights)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of the last weight: still a valid safetensors file
    weights.write_bytes(bytes(data))
    with pytest.raises(train.RunConfigError) as refused:
        train.TrainingProgress({"seed": 0}).load(checkpoint, allow_changed_settings=False)
    message = str(refused.value)
    assert f"--resume_from_checkpoint {checkpoint}: refused" in message
    assert f"model.safetensors has changed (recorded sha256 {recorded}, found {_sha256(weights)})" in message
    assert "resume from an earlier checkpoint" in message

    # A state saved before checksums were recorded still resumes, unchecked and said so.
    saved.pop("weights_sha256")
    (checkpoint / train.TrainingProgress.FILE).write_text(json.dumps(saved))
    assert train.TrainingProgress({"seed": 0}).load(checkpoint, allow_changed_settings=False) == []
    assert "records no weight checksums" in caplog.text


# ----------------------------------------------------------------------------------------------------------------
# Replacing a folder


class _Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs, no cleanup either."""


def test_a_replace_killed_between_its_renames_is_recoverable_and_refused_until_recovered(tmp_path, monkeypatch, caplog):
    output = tmp_path / "out"
    output.mkdir()
    (output / "model.safetensors").write_text("previous run")
    staging = tmp_path / "out.work" / "output"  # where train.py builds the new output
    staging.mkdir(parents=True)
    (staging / "model.safetensors").write_text("new run")
    retired = tmp_path / "out.replaced"

    real_replace = os.replace
    logged_before_first_rename = []

    def killed_before_the_second_rename(source, target):
        if Path(source) == staging:
            raise _Killed
        logged_before_first_rename.append(caplog.text)
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", killed_before_the_second_rename)
    caplog.set_level(logging.INFO, logger="cropd_hf.files")
    with pytest.raises(_Killed):
        replace_folder(staging, output)
    monkeypatch.setattr(os, "replace", real_replace)

    # Nothing lost: the previous output whole under `.replaced`, the new one whole where it was built.
    assert not output.exists()
    assert (retired / "model.safetensors").read_text() == "previous run"
    assert (staging / "model.safetensors").read_text() == "new run"
    assert f"the previous content is kept at {retired}" in logged_before_first_rename[0]
    assert f"restore it with `mv {retired} {output}`" in logged_before_first_rename[0]

    # The next run refuses, says how to recover, and never deletes what was set aside.
    with pytest.raises(InterruptedReplaceError, match=f"Restore it with `mv {retired} {output}`"):
        check_no_interrupted_replace(output)
    # train.py's checks before any work (called directly: were they to let the run through, it would train).
    args = train.parse_args(["--output_dir", str(output), "--overwrite_output_dir"])
    with pytest.raises(train.RunConfigError) as refused:
        train.check_before_work(args, load_run_config(args.config), output, output.with_name("out.work"))
    assert f"`mv {retired} {output}`" in str(refused.value) and f"`mv {staging} {output}`" in str(refused.value)
    with pytest.raises(InterruptedReplaceError):
        replace_folder(staging, output)
    assert (retired / "model.safetensors").read_text() == "previous run"

    # After `mv out.work/output out` the next replace works, and removes only a leftover of a finished replace.
    staging.rename(output)
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "model.safetensors").write_text("newer run")
    replace_folder(newer, output)
    assert (output / "model.safetensors").read_text() == "newer run"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "out.work"]


def test_resume_never_picks_a_checkpoint_set_aside_by_a_replace(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    for name in ("head-epoch-001", "head-epoch-001.replaced", "head-epoch-002.partial"):
        (checkpoints / name).mkdir(parents=True)
    assert train.latest_checkpoint(tmp_path).name == "head-epoch-001"


# ----------------------------------------------------------------------------------------------------------------
# A damaged `cropd-eval --resume` state


DAMAGE = {
    "truncated": lambda good: good[: len(good) // 2],
    "empty": lambda good: "",
    "not an object": lambda good: "[]",
    "another batch's": lambda good: good.replace('"batch": 1', '"batch": 0'),
    "too few samples": lambda good: json.dumps({**json.loads(good), "labels": [0]}),
}


def test_resuming_from_a_damaged_saved_batch_is_refused_naming_the_file_and_what_to_do(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    images = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        labels = model(images).argmax(dim=1)
    dataset = Dataset.from_dict({"pixel_values": images.numpy(), "labels": labels.numpy()}).with_format("torch")
    settings = EvaluationSettings(attacks=("fgsm",), pgd_steps=(2,), batch_size=4, dataset="random")
    state = tmp_path / "state"
    first = evaluate_model(model, dataset, settings, state_dir=state)
    batch = state / "batch-00001.json"
    good = batch.read_text()

    for damage, make in DAMAGE.items():
        batch.write_text(make(good))
        with pytest.raises(ResumeStateError) as refused:
            evaluate_model(model, dataset, settings, state_dir=state, resume=True)
        message = str(refused.value)
        assert message.startswith(f"{batch} "), damage
        assert f"Delete that file (its batch is then computed again) or the folder {state}" in message
        assert "or run without --resume" in message
    assert "not lists of the batch's 4 samples" in message

    batch.unlink()  # as the message says
    assert evaluate_model(model, dataset, settings, state_dir=state, resume=True) == first


def test_cropd_eval_resume_with_a_truncated_state_file_exits_2_with_the_message(foundation_folder, tmp_path, capsys):
    checkpoint = tmp_path / "identity"
    torch.manual_seed(0)
    CRoPDForImageClassification(
        tiny_cropd_config(foundation_folder, num_labels=10, use_purifier=False)
    ).save_pretrained(checkpoint)
    CRoPDImageProcessor(size={"height": 8, "width": 8}, num_channels=1).save_pretrained(checkpoint)
    command = [
        "--model", str(checkpoint), "--dataset", SKLEARN_DIGITS, "--num_samples", "8", "--batch_size", "4",
        "--epsilons", "0.1", "--attacks", "fgsm", "--pgd_steps", "2", "--output_dir", str(tmp_path / "eval"),
    ]  # fmt: skip
    evaluate_main(command)
    (batch,) = (tmp_path / "eval").glob("state/*/batch-00001.json")
    batch.write_text(batch.read_text()[:-20])
    capsys.readouterr()

    with pytest.raises(SystemExit) as stopped:  # the console script's exit: code 2, no traceback
        evaluate_main([*command, "--resume"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert f"error: {batch} cannot be read (" in error and "Delete that file" in error
