"""cropd_hf.evaluation's purifier fidelity (‖g(x) − x‖², PSNR, the worst-case adversarial image) and quick suite."""

import dataclasses
import json

import pytest
import torch
from datasets import Dataset
from test_evaluation import SETTINGS, _dataset, _mlp
from torch import nn

from cropd_hf import CRoPDForImageClassification
from cropd_hf.evaluation import (
    PSNR_CAP_DB,
    EvaluationReport,
    EvaluationSettings,
    attack_suite,
    evaluate_model,
    markdown_report,
    psnr_from_mse,
    purifier_fidelity,
    quick_suite_settings,
    write_outputs,
)
from cropd_hf.evaluation.fidelity import WorstCaseImages
from cropd_hf.evaluation.report import fidelity_summary


class _Purified(nn.Module):
    """A classifier behind a purifier g, with CRoPDForImageClassification's interface: ``purify(x)`` is ``g(x)``."""

    def __init__(self, classifier: nn.Module, purifier: nn.Module):
        super().__init__()
        self.classifier = classifier
        self.purifier = purifier

    def purify(self, pixel_values):
        return self.purifier(pixel_values)

    def forward(self, pixel_values):
        return self.classifier(self.purify(pixel_values))


class _Grey(nn.Module):
    """A purifier that forgets its input: every pixel 0.5 (differentiable, with a zero gradient)."""

    def forward(self, pixel_values):
        return pixel_values * 0 + 0.5


def test_psnr_from_mse_is_capped_at_100_db():
    assert psnr_from_mse(1.0) == 0 and psnr_from_mse(0.01) == pytest.approx(20)
    assert psnr_from_mse(0.25) == pytest.approx(6.0206, abs=1e-4)
    # MSE 0 (g returns its input exactly) would be an infinite PSNR, which JSON cannot hold.
    assert psnr_from_mse(0.0) == PSNR_CAP_DB == 100 and psnr_from_mse(1e-12) == 100
    assert 99.9 < psnr_from_mse(1.01e-10) < 100
    for bad in (-1e-3, float("nan")):
        with pytest.raises(ValueError, match="an MSE is a number >= 0"):
            psnr_from_mse(bad)


def test_purifier_fidelity_of_an_identity_and_of_a_grey_purifier(tiny_config):
    images = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    assert purifier_fidelity(_Purified(_mlp(), nn.Identity()), images) == {
        "mse": 0.0,
        "psnr_db": 100.0,
        "num_samples": 10,
    }
    grey = _Purified(_mlp(), _Grey())
    # Black and white pixels are all 0.5 from grey: MSE 0.25, PSNR 10·log10(4) = 6.02 dB.
    black_and_white = purifier_fidelity(grey, (images > 0.5).float(), batch_size=3)
    assert black_and_white["mse"] == 0.25 and black_and_white["psnr_db"] == pytest.approx(6.0206, abs=1e-4)
    # Uniform pixels: E[(x - 0.5)²] = 1/12, about 10.8 dB; exactly the images' own mean squared distance to grey.
    measured = purifier_fidelity(grey, images, batch_size=4)
    assert measured["mse"] == pytest.approx(((images.double() - 0.5) ** 2).mean().item(), rel=1e-12)
    assert measured["psnr_db"] == pytest.approx(10 * torch.tensor(12.0).log10().item(), abs=0.5)
    # A Dataset with pixel_values rows, or a loader of batches, instead of a tensor.
    dataset = Dataset.from_dict({"pixel_values": images.numpy()}).with_format("torch")
    for source in (dataset, torch.utils.data.DataLoader(dataset, batch_size=4)):
        assert purifier_fidelity(grey, source) == pytest.approx(measured)

    cropd = CRoPDForImageClassification(tiny_config()).train()
    fidelity = purifier_fidelity(cropd, images[:4])
    assert 0 < fidelity["mse"] < 1 and fidelity["num_samples"] == 4
    assert cropd.purifier.training, "the model's mode is restored"
    for model in (_mlp(), CRoPDForImageClassification(tiny_config(use_purifier=False))):
        with pytest.raises(ValueError, match="has no purifier"):
            purifier_fidelity(model, images)


def test_the_worst_case_image_is_the_last_attack_that_broke_the_sample_else_the_last_run():
    clean = torch.zeros(4, 1, 2, 2)
    worst = WorstCaseImages(clean)
    # Attack 1 breaks samples 0 and 2, attack 2 sample 2 only, attack 3 (a cascade) runs on the survivor 1 only.
    worst.update(torch.tensor([0, 1, 2]), torch.full((3, 1, 2, 2), 0.1), torch.tensor([True, False, True]))
    worst.update(torch.tensor([0, 1, 2]), torch.full((3, 1, 2, 2), 0.2), torch.tensor([False, False, True]))
    worst.update(torch.tensor([1]), torch.full((1, 1, 2, 2), 0.3), torch.tensor([False]))

    purified, perturbation = worst.fidelity(lambda images: images * 0 + 1, clean)

    # Sample 0: attack 1's image; sample 1: never broken, the last run (3); sample 2: attack 2; sample 3: none.
    assert perturbation == [pytest.approx(0.01), pytest.approx(0.09), pytest.approx(0.04), None]
    assert purified == [1.0, 1.0, 1.0, None]


def test_evaluation_measures_the_purifiers_fidelity_on_the_worst_case_images():
    plain = _mlp()
    dataset = _dataset(plain)
    identity = evaluate_model(_Purified(plain, nn.Identity()), dataset, SETTINGS, model_name="m")

    # Measuring g changes no other number: the same function without a purifier gives the same result.
    assert dataclasses.replace(identity, fidelity=None) == evaluate_model(plain, dataset, SETTINGS, model_name="m")
    fidelity = identity.fidelity
    assert (fidelity["clean_mse"], fidelity["clean_psnr_db"], fidelity["num_samples"]) == (0.0, 100.0, 32)
    (at,) = fidelity["epsilons"]
    # g(x_adv) = x_adv: the purified error is the perturbation's, inside the ε-ball; every sample correct clean.
    assert at["epsilon"] == 0.1 and at["num_samples"] == 32
    assert at["purified_mse"] == at["perturbation_mse"] and 0 < at["perturbation_mse"] <= 0.1**2
    assert at["purified_psnr_db"] == psnr_from_mse(at["purified_mse"]) >= 20

    grey = _Purified(plain, _Grey())
    grey_dataset = _dataset(grey)
    (at,) = evaluate_model(grey, grey_dataset, SETTINGS).fidelity["epsilons"]
    images = grey_dataset[:]["pixel_values"].double()
    # g ignores its input: the attacked image comes out as grey as the clean one, whatever the perturbation.
    assert at["purified_mse"] == pytest.approx(((images - 0.5) ** 2).mean().item(), rel=1e-9)
    assert at["purified_psnr_db"] == pytest.approx(10.8, abs=0.5)
    assert at["num_samples"] == 32 and 0 <= at["perturbation_mse"] <= 0.1**2


def test_eval_json_keeps_the_fidelity_and_loads_files_written_without_it(tmp_path):
    plain = _mlp()
    settings = EvaluationSettings(epsilons=(0.1, 0.05), pgd_steps=(3,), apgd_steps=3, apgd_targets=3, batch_size=16)
    dataset = _dataset(plain, count=20)
    purified = evaluate_model(_Purified(plain, nn.Identity()), dataset, settings, model_name="cropd")
    report = EvaluationReport(settings, [evaluate_model(plain, dataset, settings, model_name="identity"), purified])

    write_outputs(report, tmp_path)

    loaded = EvaluationReport.load(tmp_path / "eval.json")
    assert loaded == report and loaded.models[1].fidelity == purified.fidelity
    stored = json.loads((tmp_path / "eval.json").read_text())
    assert stored["models"][0]["fidelity"] is None
    assert [entry["epsilon"] for entry in stored["models"][1]["fidelity"]["epsilons"]] == [0.1, 0.05]
    table = (tmp_path / "eval.md").read_text()
    assert table == markdown_report(loaded)
    assert "| AutoAttack-style | clean PSNR (dB) | ‖g(x_adv)−x‖² / ‖x_adv−x‖² | sanity |" in table
    at = purified.fidelity_at(0.05)
    assert f"| 100.00 | {at['purified_mse']:.4g} / {at['perturbation_mse']:.4g} |" in table
    assert "| — | — |" in table, "the Identity model has no purifier"
    assert fidelity_summary(purified).startswith("purifier: clean PSNR 100.00 dB, ‖g(x_adv)−x‖² / ‖x_adv−x‖² ε=0.1 ")
    assert fidelity_summary(report.models[0]) == ""

    # An eval.json written before the fidelity was measured: it loads, and its table has no fidelity columns.
    for model in stored["models"]:
        del model["fidelity"]
    old = EvaluationReport.from_dict(stored)
    assert old.models == [dataclasses.replace(model, fidelity=None) for model in report.models]
    assert "PSNR" not in markdown_report(old)


def test_saved_batches_without_fidelity_records_are_computed_again(tmp_path, capsys):
    model = _Purified(_mlp(), nn.Identity())
    dataset = _dataset(model.classifier, count=48)
    state = tmp_path / "state"
    first = evaluate_model(model, dataset, SETTINGS, state_dir=state, model_name="cropd")
    path = state / "batch-00001.json"
    record = json.loads(path.read_text())
    assert isinstance(record["fidelity/clean"][0], float) and len(record["fidelity/eps=0.1/purified"]) == 16
    # As an older cropd-eval wrote it: predictions only.
    path.write_text(json.dumps({key: value for key, value in record.items() if not key.startswith("fidelity/")}))
    capsys.readouterr()

    resumed = evaluate_model(model, dataset, SETTINGS, state_dir=state, resume=True, model_name="cropd")

    out = capsys.readouterr().out
    assert f"{path} lacks the records fidelity/clean" in out and "computing this batch again" in out
    assert "resumed 2 of 3 finished batches" in out
    assert resumed == first and json.loads(path.read_text()) == record


def test_the_quick_suite_runs_fgsm_and_pgd_only_and_every_sanity_check():
    settings = quick_suite_settings(0.1, pgd_steps=(3, 6), batch_size=16, seed=1)
    assert (settings.epsilons, settings.attacks, settings.pgd_steps) == ((0.1,), ("fgsm", "pgd"), (3, 6))
    assert settings.pgd_alpha is None and settings.seed == 1 and settings.batch_size == 16
    # A three-class model, which APGD-T would refuse: the quick suite and its sanity checks do without it.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    suite = attack_suite(0.1, settings, num_classes=3)
    assert [entry.name for entry in suite] == ["fgsm", "pgd3", "pgd6"]
    assert [entry.attack.alpha for entry in suite[1:]] == [pytest.approx(2.5 * 0.1 / 3), pytest.approx(2.5 * 0.1 / 6)]

    result = evaluate_model(model, _dataset(model), settings)

    assert [attack.name for attack in result.results[0].attacks] == ["fgsm", "pgd3", "pgd6"]
    assert not any(attack.cascade for attack in result.results[0].attacks)
    collapse, effort, transfer, gradients = result.sanity_checks
    # The collapse chain keeps APGD-CE (on PGD's survivors only) whatever the suite: see settings._plan.
    assert set(collapse.attacks) == {"pgd6", "apgd-ce"} and collapse.passed
    assert set(effort.measured) == {"pgd3", "pgd6", "pgd12", "pgd6-restarts2"}
    assert transfer.status == "SKIPPED" and gradients.passed
    assert result.fidelity is None


def test_without_sanity_checks_only_the_suite_and_the_gradient_check_run_with_the_same_suite_figures():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    full = quick_suite_settings(0.1, pgd_steps=(3, 6), batch_size=16, seed=1)
    quick = quick_suite_settings(0.1, pgd_steps=(3, 6), batch_size=16, seed=1, sanity_checks=False)
    assert "sanity_checks" not in full.to_dict(), "reports written before the field compare equal"
    assert quick.to_dict()["sanity_checks"] is False
    with_checks, without = evaluate_model(model, _dataset(model), full), evaluate_model(model, _dataset(model), quick)
    assert [check.name for check in without.sanity_checks] == ["input gradients finite and non-zero"]
    assert without.results == with_checks.results and without.clean_accuracy == with_checks.clean_accuracy
