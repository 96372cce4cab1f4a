"""The runner: every batch through the attack plan (seeded per batch and attack), the records of each finished
batch saved for resuming, the batches shared among ``accelerate`` processes, and ``evaluate_model`` on top."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..attacks import _as_tensor, _eval_mode
from ..files import write_text_atomically
from .fidelity import CLEAN_KEY, WorstCaseImages, fidelity_keys, has_purifier, per_sample_mse
from .results import ModelResult
from .sanity import summarize
from .settings import NOT_ATTACKED, EvaluationSettings, _Chain, _epsilon_key, _plan


class ResumeStateError(ValueError):
    """A batch saved for resuming cannot be used (truncated, corrupt or not from this evaluation)."""


def input_gradient_health(model: Callable[[Tensor], Any], images: Tensor, labels: Tensor) -> Tensor:
    """Per sample: is the input gradient of the logit margin ``z_y - max_{i≠y} z_i`` finite and non-zero?

    The margin, unlike cross-entropy, does not saturate on confident predictions, so a zero gradient means masking.
    """
    images = images.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = _as_tensor(model(images))
        true = logits.gather(1, labels[:, None]).squeeze(1)
        wrong = logits.masked_fill(nn.functional.one_hot(labels, logits.shape[1]).bool(), -math.inf)
        margin = true - wrong.amax(dim=1)
        grad = None
        if margin.requires_grad:
            (grad,) = torch.autograd.grad(margin.sum(), images, allow_unused=True)
    if grad is None:
        return torch.zeros(len(images), dtype=torch.bool, device=images.device)
    flat = grad.flatten(1)
    return torch.isfinite(flat).all(dim=1) & (flat != 0).any(dim=1)


def _evaluate_batch(
    model: Callable[[Tensor], Any],
    pixel_values: Tensor,
    labels: Tensor,
    chains: Sequence[_Chain],
    *,
    seed: int,
    batch_index: int,
    transfer_model: Callable[[Tensor], Any] | None = None,
    purify: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, list[Any]]:
    """Per-sample records of one batch: clean and per-attack predictions (``-1``: not attacked), gradient health
    and, with ``purify`` (the model's purifier ``g``), its fidelity: clean ``‖g(x) − x‖²`` and per ε
    ``‖g(x_adv) − x‖²`` and ``‖x_adv − x‖²`` of the worst-case ``x_adv`` (floats; None where not attacked)."""
    with torch.no_grad():
        clean = _as_tensor(model(pixel_values)).argmax(dim=1)
    records: dict[str, list[Any]] = {
        "labels": labels.tolist(),
        "clean": clean.tolist(),
        "gradient_ok": input_gradient_health(model, pixel_values, labels).long().tolist(),
    }
    fidelity: dict[str, list[Any]] = {}
    if purify is not None:
        with torch.no_grad():
            fidelity[CLEAN_KEY] = per_sample_mse(purify(pixel_values), pixel_values).tolist()
    correct = clean == labels
    for chain in chains:
        robust = correct.clone()
        source = transfer_model if chain.transfer else model
        # The suite's chain at one ε (not a sanity check's): keep each sample's worst-case adversarial image.
        worst = WorstCaseImages(pixel_values) if purify is not None and _is_suite(chain) else None
        for entry in chain.attacks:
            key = f"{chain.key}/{entry.name}"
            attacked = (robust if entry.cascade else correct).nonzero().squeeze(1)
            predictions = torch.full_like(labels, NOT_ATTACKED)
            if len(attacked):
                with _seeded(seed, batch_index, key):
                    adversarial = entry.attack(source, pixel_values[attacked], labels[attacked])
                with torch.no_grad():
                    predictions[attacked] = _as_tensor(model(adversarial)).argmax(dim=1)
                if worst is not None:
                    worst.update(attacked, adversarial, predictions[attacked] != labels[attacked])
            robust &= predictions == labels
            records[key] = predictions.tolist()
        if worst is not None:
            purified_key, perturbation_key = fidelity_keys(chain.key)
            fidelity[purified_key], fidelity[perturbation_key] = worst.fidelity(purify, pixel_values)
    records.update(fidelity)
    return records


def _is_suite(chain: _Chain) -> bool:
    return not chain.transfer and chain.key == _epsilon_key(chain.epsilon)


def _record_keys(chains: Sequence[_Chain], with_fidelity: bool) -> set[str]:
    """Every key a batch's records hold: what a saved batch must have to be reused."""
    keys = {"labels", "clean", "gradient_ok"}
    keys |= {f"{chain.key}/{entry.name}" for chain in chains for entry in chain.attacks}
    if with_fidelity:
        keys.add(CLEAN_KEY)
        keys |= {key for chain in chains if _is_suite(chain) for key in fidelity_keys(chain.key)}
    return keys


@contextmanager
def _seeded(seed: int, *parts: Any) -> Iterator[None]:
    """The global RNG seeded from ``(seed, *parts)`` inside, restored after: random starts that depend on the batch
    and the attack only, not on what ran before or on which process runs it."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int.from_bytes(digest[:8], "little") % 2**63)
        yield


def evaluate_model(
    model: nn.Module,
    dataset: Any,
    settings: EvaluationSettings,
    *,
    accelerator: Any = None,
    transfer_model: nn.Module | None = None,
    state_dir: str | os.PathLike | None = None,
    resume: bool = False,
    model_name: str = "model",
) -> ModelResult:
    """Evaluate ``model`` on ``dataset`` (``dataset[start:stop]`` gives ``pixel_values`` in [0, 1] and ``labels``,
    as ``cropd_hf.data.with_pixel_values`` makes) with the suite and sanity checks of ``settings``.

    With an ``accelerate.Accelerator`` the batches are shared among its processes and the records gathered; every
    process returns the same result. With ``state_dir`` each finished batch is saved there, and ``resume=True``
    reuses the batches a previous (killed) run finished; without it the folder is emptied first. A saved batch that
    lacks some of the records this run makes (e.g. written by a ``cropd-eval`` without purifier fidelity) is
    computed again, with a note naming its file; seeded per batch and attack, its predictions come out the same.

    A model with a purifier (``model.purifier is not None``, ``model.purify(x)`` = ``g(x)``) also gets the purifier's
    fidelity (``ModelResult.fidelity``, see ``cropd_hf.evaluation.fidelity``), from forward passes of ``g`` only.
    """
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    is_main = rank == 0
    device = accelerator.device if accelerator else next(iter(model.parameters()), torch.empty(0)).device
    num_samples = len(dataset)
    if num_samples == 0:
        raise ValueError("the dataset to evaluate on is empty")
    starts = range(0, num_samples, settings.batch_size)
    batches = [(start, min(start + settings.batch_size, num_samples)) for start in starts]

    with _eval_mode(model), _eval_mode(transfer_model):
        probe = dataset[0:1]["pixel_values"].to(device)
        num_classes = _num_classes(model, probe)
        if transfer_model is not None and _num_classes(transfer_model, probe) != num_classes:
            raise ValueError(
                f"the transfer model has {_num_classes(transfer_model, probe)} classes, the evaluated model "
                f"{num_classes}: they must classify the same labels"
            )
        chains = _plan(settings, num_classes, transfer_model is not None)
        purify = model.purify if has_purifier(model) else None
        expected = _record_keys(chains, purify is not None)

        state = Path(state_dir) if state_dir is not None else None
        finished: dict[int, dict[str, list[Any]]] = {}
        if state is not None and is_main:
            if not resume:
                shutil.rmtree(state, ignore_errors=True)
            state.mkdir(parents=True, exist_ok=True)
            try:
                finished = _load_finished(state, batches, expected)
            except ResumeStateError as error:
                finished = error  # broadcast, so that every process stops with it instead of waiting for the main one
            else:
                if resume:
                    print(f"{model_name}: resumed {len(finished)} of {len(batches)} finished batches from {state}")
        finished = _broadcast(finished, world)
        if isinstance(finished, ResumeStateError):
            raise finished
        pending = [index for index in range(len(batches)) if index not in finished]
        mine: dict[int, dict[str, list[Any]]] = {}
        bar = tqdm(pending[rank::world], desc=model_name, disable=not is_main, unit="batch", leave=False)
        for index in bar:
            start, stop = batches[index]
            batch = dataset[start:stop]
            mine[index] = _evaluate_batch(
                model,
                batch["pixel_values"].to(device),
                batch["labels"].to(device),
                chains,
                seed=settings.seed,
                batch_index=index,
                transfer_model=transfer_model,
                purify=purify,
            )
            if state is not None:
                write_text_atomically(state / f"batch-{index:05d}.json", json.dumps({"batch": index, **mine[index]}))
    everything = {**finished, **_gather(mine, world)}
    records = {
        key: [value for index in sorted(everything) for value in everything[index][key]] for key in everything[0]
    }
    return summarize(records, settings, num_classes, model_name, transfer_model is not None)


def _num_classes(model: Callable[[Tensor], Any], probe: Tensor) -> int:
    with torch.no_grad():
        logits = _as_tensor(model(probe))
    if logits.dim() != 2:
        raise ValueError(f"the model must return logits of shape (batch, num_classes), got {tuple(logits.shape)}")
    return logits.shape[1]


def _load_finished(state: Path, batches: list[tuple[int, int]], expected: set[str]) -> dict[int, dict[str, list[Any]]]:
    """The saved batches that hold every record of ``expected``; the others are left to compute again. A file that
    is not a saved batch of this evaluation raises ``ResumeStateError``."""
    finished = {}
    for index, (start, stop) in enumerate(batches):
        path = state / f"batch-{index:05d}.json"
        if path.is_file():
            record = _read_batch(path, index, stop - start)
            missing = sorted(expected - set(record))
            if missing:
                shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
                print(f"{path} lacks the records {shown} (an older cropd-eval wrote it): computing this batch again")
                continue
            finished[index] = record
    return finished


def _read_batch(path: Path, index: int, size: int) -> dict[str, list[Any]]:
    """The records of batch ``index`` (``size`` samples) saved in ``path``, without its ``batch`` field."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _damaged(path, f"cannot be read ({error})") from None
    if not isinstance(record, dict) or record.pop("batch", None) != index:
        raise _damaged(path, f'is not the saved batch {index} (a JSON object with "batch": {index})')
    wrong = sorted(key for key, value in record.items() if not isinstance(value, list) or len(value) != size)
    if wrong:
        raise _damaged(path, f"holds records ({', '.join(wrong[:3])}) that are not lists of the batch's {size} samples")
    return record


def _damaged(path: Path, problem: str) -> ResumeStateError:
    return ResumeStateError(
        f"{path} {problem}: the state of the evaluation being resumed is damaged. Delete that file (its batch is then "
        f"computed again) or the folder {path.parent} (to start this evaluation over), or run without --resume."
    )


def _broadcast(value: Any, world: int) -> Any:
    if world == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def _gather(mine: dict[int, Any], world: int) -> dict[int, Any]:
    if world == 1:
        return mine
    from accelerate.utils import gather_object

    return dict(gather_object(list(mine.items())))


def _fingerprint(*parts: Any) -> str:
    """A short hash of the settings, the model and its weights: the state folder of exactly this evaluation."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, nn.Module):
            for name, tensor in sorted(part.state_dict().items()):
                digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.double().sum().item()!r}".encode())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]
