"""Robust accuracy: the share of samples a classifier still gets right, under attack or not.

Shipped with cropd_hf and loaded by path, so that scoring never reaches the Hub:

    >>> from cropd_hf.metrics import load_robust_accuracy
    >>> metric = load_robust_accuracy()
    >>> metric.compute(predictions=[[1, 1], [2, 0]], references=[1, 2])
    {'accuracy': 0.5, 'num_samples': 2}
"""

import datasets
import evaluate

_DESCRIPTION = """
Accuracy of a classifier on clean or adversarial inputs. `predictions` holds, per sample, either one predicted
class or one prediction per attack; with several, a sample counts as correct only if every attack failed
(the per-sample worst case, as AutoAttack-style evaluations report it).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]` or `list[list[int]]`): predicted class per sample, or per sample and attack.
    references (`list[int]`): true class per sample.
Returns:
    accuracy (`float`): share of samples correct under every attack given, in [0, 1].
    num_samples (`int`): how many samples were scored.
"""

_CITATION = """
@article{cropd2025,
  title={How to Enhance Downstream Adversarial Robustness (almost) without Touching the Pre-Trained Foundation
         Model?},
  journal={arXiv preprint arXiv:2504.10850},
  year={2025}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RobustAccuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
                datasets.Features(
                    {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Value("int64")}
                ),
            ],
        )

    def _compute(self, predictions: list, references: list[int]) -> dict:
        if not references:
            raise ValueError("robust_accuracy needs at least one sample; got none.")
        correct = 0
        for prediction, reference in zip(predictions, references, strict=True):
            per_attack = prediction if isinstance(prediction, list) else [prediction]
            correct += all(p == reference for p in per_attack)
        return {"accuracy": correct / len(references), "num_samples": len(references)}
