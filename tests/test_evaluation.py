"""cropd_hf.evaluation and its command line: suite, worst case, checks, eval.json, resume."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import BINARIZING_PURIFIER, make_it_binarize, tiny_cropd_config
from datasets import Dataset
from torch import nn

from cropd_hf import CRoPDForImageClassification, CRoPDImageProcessor
from cropd_hf.attacks import APGD, FGSM, PGD
from cropd_hf.data import SKLEARN_DIGITS, load_image_dataset, pixel_tensors
from cropd_hf.evaluation import (
    EvaluationReport,
    EvaluationSettings,
    attack_suite,
    check_gradient_health,
    check_large_epsilon_collapse,
    check_more_effort_does_not_help,
    check_white_box_beats_transfer,
    evaluate_model,
    main,
    markdown_report,
    merge_reports,
    noise_margin,
    parse_args,
    print_sanity_report,
    psnr_from_mse,
    summarize,
    write_outputs,
)

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
PNG = b"\x89PNG\r\n\x1a\n"

# Small but complete: every attack, two ε, the transfer check; 6 batches per model.
FAST = ["--pgd_steps", "3", "6", "--apgd_steps", "4", "--apgd_targets", "3", "--num_samples", "48", "--batch_size", "8"]


# ----------------------------------------------------------------------------------------------------------------
# Models and data


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    with torch.no_grad():
        model[1].weight.mul_(3)
    return model


class _Quantized(nn.Module):
    """Gradient masking on purpose: rounding to 5 grey levels in front of the model has zero input gradient."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(torch.round(pixel_values * 4) / 4)


def _dataset(model: nn.Module, count: int = 32) -> Dataset:
    """Random 1x8x8 images labelled by ``model`` itself, so its clean accuracy is 100 %."""
    images = torch.rand(count, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        labels = model(images).argmax(dim=1)
    return Dataset.from_dict({"pixel_values": images.numpy(), "labels": labels.numpy()}).with_format("torch")


SETTINGS = EvaluationSettings(pgd_steps=(5,), apgd_steps=5, apgd_targets=3, batch_size=16, dataset="random")


def _tiny_checkpoint(folder: Path, foundation: str, use_purifier: bool) -> None:
    """A tiny CRoPD model for 8x8 digits; purifier trained as an auto-encoder, head fit on frozen features."""
    torch.manual_seed(0)
    config = tiny_cropd_config(foundation, num_labels=10, use_purifier=use_purifier)
    model = CRoPDForImageClassification(config)
    processor = CRoPDImageProcessor(size={"height": 8, "width": 8}, num_channels=1)
    images, labels = pixel_tensors(load_image_dataset(SKLEARN_DIGITS)["train"], processor)
    if use_purifier:
        optimizer = torch.optim.Adam(model.purifier.parameters(), lr=3e-3)
        for _ in range(150):
            batch = images[torch.randint(len(images), (128,))]
            loss = F.mse_loss(model.purify(batch), batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        features = model.foundation_features(model.purify(images) if use_purifier else images)
    optimizer = torch.optim.Adam(model.classifier.parameters(), lr=3e-2)
    for _ in range(300):
        loss = F.cross_entropy(model.classifier(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


@pytest.fixture(scope="module")
def checkpoints(foundation_folder, tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("checkpoints")
    _tiny_checkpoint(folder / "identity", foundation_folder, use_purifier=False)
    _tiny_checkpoint(folder / "cropd", foundation_folder, use_purifier=True)
    return {"identity": str(folder / "identity"), "cropd": str(folder / "cropd")}


def _command(checkpoints: dict[str, str], output: Path) -> list[str]:
    return [
        "--model", checkpoints["identity"], checkpoints["cropd"], "--dataset", SKLEARN_DIGITS,
        "--epsilons", "0.1", "0.05", "--transfer_from", checkpoints["identity"], "--output_dir", str(output), *FAST,
    ]  # fmt: skip


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cropd_hf.evaluation", *args],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def reference_run(checkpoints, tmp_path_factory) -> Path:
    """One uninterrupted, single-process run: the numbers that a resumed or a two-process run must reproduce."""
    output = tmp_path_factory.mktemp("reference") / "eval"
    result = _run(*_command(checkpoints, output))
    assert result.returncode == 0, result.stderr[-3000:]
    return output


# ----------------------------------------------------------------------------------------------------------------
# The suite and the worst case


def test_attack_suite_holds_every_attack_with_its_settings():
    settings = EvaluationSettings(pgd_steps=(20, 10), pgd_restarts=2, apgd_steps=30, apgd_targets=9)
    suite = attack_suite(0.1, settings, num_classes=10)

    assert [entry.name for entry in suite] == ["fgsm", "pgd10", "pgd20", "apgd-ce", "apgd-t"]
    assert [entry.cascade for entry in suite] == [False, False, False, True, True]
    fgsm, pgd10, pgd20, apgd_ce, apgd_t = (entry.attack for entry in suite)
    assert isinstance(fgsm, FGSM) and fgsm.eps == 0.1
    assert isinstance(pgd10, PGD) and pgd10.alpha == pytest.approx(0.025) and pgd10.restarts == 2
    assert pgd20.alpha == pytest.approx(0.0125) and pgd20.steps == 20
    assert isinstance(apgd_ce, APGD) and apgd_ce.settings()["loss"] == "ce" and apgd_ce.steps == 30
    assert apgd_t.settings()["targeted"] and apgd_t.settings()["n_target_classes"] == 9

    fixed = EvaluationSettings(pgd_alpha=2 / 255, attacks=("pgd", "apgd-t"), apgd_targets=9)
    pgd10, pgd20, apgd_t = (entry.attack for entry in attack_suite(8 / 255, fixed, num_classes=5))
    assert pgd10.alpha == pgd20.alpha == 2 / 255
    assert apgd_t.n_target_classes == 4, "at most every wrong class"
    with pytest.raises(ValueError, match="apgd-t .* needs at least 4 classes, the model has 3"):
        attack_suite(0.1, settings, num_classes=3)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"epsilons": ()}, "epsilons must be a non-empty list"),
        ({"epsilons": (0.0,)}, r"radii in \(0, 1\]"),
        ({"epsilons": (0.1, 1.5)}, r"radii in \(0, 1\]"),
        ({"epsilons": (0.1, 0.1)}, "epsilons must not repeat"),
        ({"attacks": ("pgd", "cw")}, "attacks must be distinct names from"),
        ({"attacks": ()}, "attacks must be distinct names from"),
        ({"pgd_steps": (10, 0)}, "pgd_steps must be a non-empty list of integers >= 1"),
        ({"pgd_alpha": 0.0}, r"pgd_alpha must be in \(0, 1\]"),
        ({"apgd_steps": 0}, "apgd_steps must be an integer >= 1"),
        ({"batch_size": 2.5}, "batch_size must be an integer >= 1"),
        ({"num_samples": 0}, "num_samples must be an integer >= 1 or None"),
        ({"sanity_epsilon": 2.0}, r"sanity_epsilon must be in \(0, 1\]"),
    ],
)
def test_bad_settings_raise_a_clear_value_error(values, message):
    with pytest.raises(ValueError, match=message):
        EvaluationSettings(**values)


def _records(**attacks: list[int]) -> dict[str, list[int]]:
    records = {"labels": [0, 1, 2, 3, 4], "clean": [0, 1, 2, 3, 9], "gradient_ok": [1, 1, 1, 1, 1]}
    # The sanity chains: nobody robust at the large ε, PGD with more effort as good as PGD.
    records.update({key: [-1] * 5 for key in ("collapse/pgd10", "collapse/apgd-ce")})
    records.update({key: attacks["pgd10"] for key in ("effort/pgd20", "effort/pgd10-restarts2")})
    records.update({f"eps=0.1/{name}": predictions for name, predictions in attacks.items()})
    return records


def test_the_worst_case_is_taken_per_sample():
    settings = EvaluationSettings(attacks=("fgsm", "pgd", "apgd-ce"), pgd_steps=(10,))
    # Sample 4 is wrong clean: right under FGSM, it is still not robust. FGSM breaks sample 0, PGD sample 1, and
    # APGD-CE (run on the survivors 2 and 3 only, -1 elsewhere) sample 2: each attack alone leaves 60 %, the worst
    # case 20 %.
    records = _records(fgsm=[5, 1, 2, 3, 4], pgd10=[0, 6, 2, 3, -1], **{"apgd-ce": [-1, -1, 7, 3, -1]})

    result = summarize(records, settings, num_classes=10, model_name="m", with_transfer=False)

    assert result.clean_accuracy == 0.8 and result.num_samples == 5
    (at_eps,) = result.results
    fgsm, pgd, apgd = at_eps.attacks
    assert (fgsm.accuracy, pgd.accuracy, apgd.accuracy) == (0.6, 0.6, None)
    assert (fgsm.cumulative_accuracy, pgd.cumulative_accuracy, apgd.cumulative_accuracy) == (0.6, 0.4, 0.2)
    assert at_eps.worst_case_accuracy == 0.2
    assert apgd.num_attacked == 2 and apgd.cascade and not fgsm.cascade
    assert pgd.settings == {
        "name": "PGD",
        "eps": 0.1,
        "alpha": 0.025,
        "steps": 10,
        "restarts": 1,
        "random_start": True,
    }


def test_sanity_checks_pass_and_fail_at_their_thresholds():
    assert check_large_epsilon_collapse(0.01, 0.5, {}).passed
    assert not check_large_epsilon_collapse(0.011, 0.5, {}).passed
    # n = 100, weaker accuracy 0.5: the noise margin is 2·sqrt(0.25/100) = 0.1.
    assert noise_margin(0.5, 100) == pytest.approx(0.1)
    assert noise_margin(0.0, 100) == pytest.approx(0.01), "at least one sample"
    assert check_more_effort_does_not_help([("pgd10", 0.5, "pgd20", 0.6)], 100, {}).passed
    failed = check_more_effort_does_not_help([("pgd10", 0.5, "pgd20", 0.45), ("pgd20", 0.45, "pgd40", 0.56)], 100, {})
    assert not failed.passed and "pgd40 0.5600 > pgd20 0.4500" in failed.note
    assert check_white_box_beats_transfer(0.22, 0.2, 1000, {}, "identity").passed
    assert not check_white_box_beats_transfer(0.3, 0.2, 1000, {}, "identity").passed
    assert check_gradient_health(0.99).passed and not check_gradient_health(0.98).passed
    assert check_gradient_health(0.98).status == "FAILED"


def test_a_model_that_masks_its_gradients_is_flagged(capsys):
    plain = _mlp()
    masked = _Quantized(plain)
    dataset = _dataset(masked)

    honest = evaluate_model(plain, dataset, SETTINGS, transfer_model=plain, model_name="plain")
    flagged = evaluate_model(masked, dataset, SETTINGS, transfer_model=plain, model_name="quantized")

    assert not honest.failed_checks, [check for check in honest.sanity_checks if not check.passed]
    assert flagged.clean_accuracy == 1
    failed = {check.name: check for check in flagged.failed_checks}
    assert failed["input gradients finite and non-zero"].measured["fraction"] == 0
    # Zero gradients leave white-box PGD at its random start; the examples made on the plain model go through.
    transfer = failed["white-box at least as strong as transfer"].measured
    assert transfer["white_box"] > transfer["transfer"] + transfer["margin"]

    report = EvaluationReport(SETTINGS, [honest, flagged])
    capsys.readouterr()  # the progress bars
    print_sanity_report(report)
    out, err = capsys.readouterr()
    assert "SANITY CHECK FAILED" in err and "quantized: input gradients finite and non-zero" in err
    assert "[FAILED ] quantized" in out and "plain" not in err
    assert report.to_dict()["sanity_passed"] is False
    assert "**FAILED**" in markdown_report(report)


def test_eval_json_round_trips_and_regenerates_the_table(tmp_path):
    model = _mlp()
    settings = EvaluationSettings(
        epsilons=(0.1, 0.05), pgd_steps=(3, 5), apgd_steps=4, apgd_targets=3, batch_size=16, transfer_from="itself"
    )
    result = evaluate_model(model, _dataset(model, count=20), settings, transfer_model=model, model_name="mlp")
    report = EvaluationReport(settings, [result])

    written = write_outputs(report, tmp_path)

    loaded = EvaluationReport.load(tmp_path / "eval.json")
    assert loaded == report
    assert loaded.to_dict() == json.loads((tmp_path / "eval.json").read_text())
    assert markdown_report(loaded) == (tmp_path / "eval.md").read_text()
    assert {path.name for path in written} == {"eval.json", "eval.md", "accuracy.png", "robustness_vs_eps.png"}
    assert all(path.read_bytes()[:8] == PNG for path in written if path.suffix == ".png")
    stored = json.loads((tmp_path / "eval.json").read_text())
    assert stored["settings"]["epsilons"] == [0.1, 0.05] and stored["models"][0]["num_samples"] == 20
    assert all(attack["settings"]["eps"] == 0.05 for attack in stored["models"][0]["results"][1]["attacks"])


class _Counting(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, pixel_values):
        self.calls += 1
        return self.model(pixel_values)


def test_finished_batches_are_reused_on_resume(tmp_path):
    model = _Counting(_mlp())
    dataset = _dataset(model.model, count=48)
    state = tmp_path / "state"
    first = evaluate_model(model, dataset, SETTINGS, state_dir=state, model_name="mlp")
    batch_files = sorted(state.glob("batch-*.json"))
    assert [path.name for path in batch_files] == ["batch-00000.json", "batch-00001.json", "batch-00002.json"]

    batch_files[1].unlink()
    calls = model.calls
    resumed = evaluate_model(model, dataset, SETTINGS, state_dir=state, resume=True, model_name="mlp")
    calls_for_one_batch = model.calls - calls - 1  # one forward reads the number of classes
    restarted = evaluate_model(model, dataset, SETTINGS, state_dir=state, model_name="mlp")

    assert resumed == first == restarted
    assert [check.status for check in first.sanity_checks][2] == "SKIPPED", "no reference model, no transfer check"
    assert 0 < 2 * calls_for_one_batch < calls, "only the missing batch was computed again"
    assert len(list(state.glob("batch-*.json"))) == 3


def test_the_sanity_checks_run_their_own_pgd_when_the_suite_has_none():
    model = _mlp()
    settings = EvaluationSettings(attacks=("fgsm", "apgd-ce"), pgd_steps=(4,), apgd_steps=4, batch_size=16)
    result = evaluate_model(model, _dataset(model), settings, transfer_model=model)

    assert [attack.name for attack in result.results[0].attacks] == ["fgsm", "apgd-ce"]
    effort = result.sanity_checks[1]
    assert set(effort.measured) == {"pgd4", "pgd8", "pgd4-restarts2"}
    assert effort.attacks["pgd8"]["steps"] == 8 and effort.attacks["pgd4-restarts2"]["restarts"] == 2
    assert result.sanity_checks[2].attacks["white_box"] == effort.attacks["pgd4"]


# ----------------------------------------------------------------------------------------------------------------
# The command line


@pytest.mark.slow
def test_command_line_writes_eval_json_markdown_and_plots(checkpoints, reference_run):
    files = {path.name for path in reference_run.iterdir()}
    assert {"eval.json", "eval.md", "accuracy.png", "robustness_vs_eps.png", "state"} <= files
    assert (reference_run / "robustness_vs_eps.png").read_bytes()[:8] == PNG
    report = EvaluationReport.load(reference_run / "eval.json")
    assert [model.model for model in report.models] == [checkpoints["identity"], checkpoints["cropd"]]
    assert report.settings.dataset == SKLEARN_DIGITS and report.settings.num_samples == 48
    assert report.settings.epsilons == (0.1, 0.05) and report.settings.transfer_from == checkpoints["identity"]

    # The checkpoint alone reproduces the clean accuracy; every attack is white-box on the whole chain.
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    cropd = report.models[1]
    model = AutoModelForImageClassification.from_pretrained(checkpoints["cropd"]).eval()
    processor = AutoImageProcessor.from_pretrained(checkpoints["cropd"])
    images, labels = pixel_tensors(load_image_dataset(SKLEARN_DIGITS)["test"].select(range(48)), processor)
    with torch.no_grad():
        correct = (model(images).logits.argmax(-1) == labels).sum().item()
    assert correct / 48 == cropd.clean_accuracy
    assert cropd.clean_accuracy > 0.1 and cropd.at(0.1).worst_case_accuracy < cropd.clean_accuracy
    names = [attack.name for attack in cropd.at(0.1).attacks]
    assert names == ["fgsm", "pgd3", "pgd6", "apgd-ce", "apgd-t"]
    assert [check.name for check in cropd.sanity_checks] == [
        "large-epsilon collapse",
        "more steps or restarts do not help",
        "white-box at least as strong as transfer",
        "input gradients finite and non-zero",
    ]
    table = (reference_run / "eval.md").read_text()
    assert "| identity | " in table and "| cropd | " in table and "AutoAttack-style" in table

    # The purifier's fidelity: for the CRoPD model only, per ε over the samples correct clean (the attacked ones).
    assert report.models[0].fidelity is None
    fidelity = cropd.fidelity
    assert 0 < fidelity["clean_mse"] < 1 and fidelity["clean_psnr_db"] == psnr_from_mse(fidelity["clean_mse"])
    assert [entry["epsilon"] for entry in fidelity["epsilons"]] == [0.1, 0.05]
    for epsilon in (0.1, 0.05):
        at = cropd.fidelity_at(epsilon)
        assert at["num_samples"] == round(48 * cropd.clean_accuracy)
        assert 0 < at["perturbation_mse"] <= epsilon**2 + 1e-9 and 0 < at["purified_mse"] < 1
    assert "clean PSNR (dB)" in table and f"{fidelity['clean_psnr_db']:.2f}" in table


@pytest.mark.slow
def test_the_report_goes_into_the_checkpoints_model_card(checkpoints, reference_run, tmp_path):
    from huggingface_hub import ModelCard, ModelCardData

    from cropd_hf.training import report as training_report

    checkpoint = tmp_path / "cropd"
    shutil.copytree(checkpoints["cropd"], checkpoint)
    ModelCard.from_template(ModelCardData(library_name="transformers")).save(checkpoint / "README.md")

    training_report.add_evaluation(checkpoint, reference_run)
    card = ModelCard.load(checkpoint / "README.md")
    cropd = EvaluationReport.load(reference_run / "eval.json").models[1]
    accuracies = [result for result in card.data.eval_results if result.metric_type == "accuracy"]
    worst = {result.metric_args["eps"]: result.metric_value for result in accuracies}
    assert worst == {0.1: cropd.at(0.1).worst_case_accuracy, 0.05: cropd.at(0.05).worst_case_accuracy}
    assert all("AutoAttack-style" in result.metric_name for result in accuracies)
    # The purifier's fidelity on the same samples stands beside its robustness in the model-index.
    (psnr,) = [result for result in card.data.eval_results if result.metric_type == "psnr"]
    assert psnr.metric_value == round(cropd.fidelity["clean_psnr_db"], 2)
    assert "![robustness_vs_eps.png](eval_robustness_vs_eps.png)" in card.text and "| cropd | " in card.text
    assert (checkpoint / "eval_robustness_vs_eps.png").read_bytes()[:8] == PNG


@pytest.mark.slow
def test_killed_and_resumed_evaluation_gives_the_same_eval_json(checkpoints, reference_run, tmp_path):
    output = tmp_path / "eval"
    process = subprocess.Popen(
        [sys.executable, "-m", "cropd_hf.evaluation", *_command(checkpoints, output)],
        cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(output.glob("state/*/batch-00001.json")) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (output / "eval.json").exists(), "the kill came after the run ended"
    done = len(list(output.glob("state/*/batch-*.json")))

    result = _run(*_command(checkpoints, output), "--resume")

    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed {done} of 6 finished batches" in result.stdout
    assert (output / "eval.json").read_text() == (reference_run / "eval.json").read_text()


@pytest.mark.slow
def test_two_processes_give_the_same_numbers_as_one(checkpoints, reference_run, tmp_path):
    output = tmp_path / "eval"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
        "-m", "cropd_hf.evaluation", *_command(checkpoints, output),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)

    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2 process(es)" in result.stdout
    assert (output / "eval.json").read_text() == (reference_run / "eval.json").read_text()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--epsilons", "0"], "epsilons must be a non-empty list of L∞ radii in (0, 1]"),
        (["--epsilons", "1/0"], "expected a number or a fraction such as 8/255"),
        (["--attacks", "cw"], "invalid choice: 'cw'"),
        (["--pgd_steps", "0"], "pgd_steps must be a non-empty list of integers >= 1"),
        (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    ],
)
def test_bad_command_lines_stop_before_any_work(arguments, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--model", "nowhere", *arguments])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_fractions_are_accepted_for_epsilon_and_step():
    args = parse_args(["--model", "m", "--epsilons", "8/255", "0.1", "--pgd_alpha", "2/255"])
    assert args.epsilons == [8 / 255, 0.1] and args.pgd_alpha == 2 / 255


def test_reports_made_separately_merge_into_one_table_only_under_the_same_settings(tmp_path):
    model = _mlp()
    settings = EvaluationSettings(pgd_steps=(2,), apgd_steps=2, apgd_targets=2, batch_size=8)
    dataset = _dataset(model, count=8)
    first = EvaluationReport(settings, [evaluate_model(model, dataset, settings, model_name="a")])
    second = EvaluationReport(settings, [evaluate_model(model, dataset, settings, model_name="b")])
    write_outputs(first, tmp_path / "a")
    write_outputs(second, tmp_path / "b")

    main(["--merge", str(tmp_path / "a"), str(tmp_path / "b" / "eval.json"), "--output_dir", str(tmp_path / "all")])

    merged = EvaluationReport.load(tmp_path / "all" / "eval.json")
    assert merged == merge_reports([first, second])
    assert [model.model for model in merged.models] == ["a", "b"] and merged.settings == settings
    table = (tmp_path / "all" / "eval.md").read_text()
    assert "| a |" in table and "| b |" in table

    with pytest.raises(ValueError, match="repeated: \\['a'\\]"):
        merge_reports([first, first])
    other = EvaluationReport(dataclasses.replace(settings, seed=1), second.models)
    with pytest.raises(ValueError, match="other settings.*seed 0 vs 1"):
        merge_reports([first, other])
    write_outputs(other, tmp_path / "other")
    with pytest.raises(SystemExit) as stopped:
        main(["--merge", str(tmp_path / "a"), str(tmp_path / "other"), "--output_dir", str(tmp_path / "bad")])
    assert stopped.value.code == 2 and not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit) as stopped:
        main(["--merge", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "bad")])
    assert stopped.value.code == 2 and not (tmp_path / "bad").exists()


def test_bpda_runs_the_model_forward_and_passes_the_classifier_gradient_at_g_x_straight_back(tiny_config):
    from cropd_hf.evaluation.bpda import StraightThroughPurifier

    torch.manual_seed(0)
    model = CRoPDForImageClassification(tiny_config(**BINARIZING_PURIFIER)).eval()
    make_it_binarize(model.purifier)  # a saturated binarization around 0.5: g(x) = clip(x - 0.1, 0, 1) below it
    x = (torch.rand(3, 1, 8, 8) * 0.2).requires_grad_()
    bpda = StraightThroughPurifier(model)
    logits = bpda(x)
    torch.testing.assert_close(logits, model(x).logits)
    (gradient,) = torch.autograd.grad(logits[:, 0].sum(), x)
    purified = model.purify(x).detach().requires_grad_()
    (expected,) = torch.autograd.grad(model(purified, purify=False).logits[:, 0].sum(), purified)
    torch.testing.assert_close(gradient, expected)
    (white_box,) = torch.autograd.grad(model(x).logits[:, 0].sum(), x)
    # What BPDA is for: where g clips a pixel to 0 (x < β), the white-box gradient is zero; BPDA's is not.
    clipped = x.detach() < 0.1
    assert white_box[clipped].abs().max() == 0 and expected[clipped].abs().max() > 0

    with pytest.raises(ValueError, match="--bpda needs a model with a purifier"):
        StraightThroughPurifier(CRoPDForImageClassification(tiny_config(use_purifier=False)))
