"""`evaluate` modules shipped with cropd_hf, loaded by path (no metric is fetched from the Hub)."""

from pathlib import Path

import evaluate

ROBUST_ACCURACY = Path(__file__).parent / "robust_accuracy"


def load_robust_accuracy(**kwargs) -> evaluate.EvaluationModule:
    """The `robust_accuracy` metric: accuracy, or per-sample worst case over several attacks."""
    return evaluate.load(str(ROBUST_ACCURACY), **kwargs)


__all__ = ["ROBUST_ACCURACY", "load_robust_accuracy"]
