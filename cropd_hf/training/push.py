"""Upload a CRoPD checkpoint to the Hub after checking that it works wherever it is downloaded: `cropd-push`.

    cropd-push training/checkpoints/embedded --repo_id my-org/cropd-embedded-mnist --dry_run
    cropd-push training/checkpoints/embedded --repo_id my-org/cropd-embedded-mnist --private

The folder that is uploaded is built in a temporary folder from the checkpoint (hidden files and `__pycache__` left
out, the model card's `<org>/...` placeholder replaced by the repository id, the `robust-image-classification`
pipeline declared if the checkpoint predates that). Refused: a folder that is not a CRoPD checkpoint, one that holds
a pickle (`*.bin`, `*.pkl`, `*.pt`, ...: loading it could run code), one whose foundation model is a local folder
outside it. Before anything is uploaded, the weight files are checked against the sha256 recorded in metrics.json
(`weights_sha256`), and the built folder is copied to a fresh temporary folder and loaded there by a separate Python
in which cropd_hf cannot be imported (`trust_remote_code=True`, as for anyone who downloads it), through
`AutoModelForImageClassification` and the pipeline, with one prediction. `--dry_run` stops there and lists the files.
Otherwise the Hub login and the repository id are checked first, then the repository is created and the folder
uploaded.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
from huggingface_hub import HfApi
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers.dynamic_module_utils import custom_object_save

from cropd_hf import RobustImageClassificationPipeline
from cropd_hf.files import verify_weight_checksums
from cropd_hf.pipeline_cropd import TASK

# Files whose loading can run code (torch.load without weights_only, pickle): never uploaded.
PICKLE_SUFFIXES = (".bin", ".pkl", ".pickle", ".pt", ".pth", ".ckpt")
REQUIRED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
# Left out of the upload: editor and OS leftovers, byte code.
IGNORED = ("__pycache__", ".*")
# The placeholder repository id of the model card's usage code (`report.py`): the real one replaces it on upload.
CARD_PLACEHOLDER = re.compile(r"<org>/[A-Za-z0-9._-]+")
# Datasets whose test images are available offline: the check prediction uses one of their digits.
OFFLINE_DATASETS = ("embedded-mnist", "sklearn-digits")
CHECK_TIMEOUT_SECONDS = 600

# Run by a separate Python in the copied folder: cropd_hf is made unimportable, as where it is not installed.
CHECK_SCRIPT = textwrap.dedent(
    """
    import json
    import sys

    sys.modules["cropd_hf"] = None
    from transformers import AutoModelForImageClassification, pipeline

    folder, image, task = sys.argv[1:]
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)
    robust = pipeline(task, model=folder, trust_remote_code=True)
    result = robust(image, attack="fgsm", top_k=1)
    print(json.dumps({
        "model_class": type(model).__module__ + "." + type(model).__name__,
        "pipeline_class": type(robust).__module__ + "." + type(robust).__name__,
        "clean": result["clean"][0]["label"],
        "attacked_with_purifier": (result["attacked_with_purifier"] or [{}])[0].get("label"),
    }))
    """
)


class PushError(ValueError):
    """A checkpoint or a Hub setting that cannot be pushed; the message says what is wrong and what to do."""


def check_repo_id(repo_id: str) -> None:
    """Refuse a repository id that is not `namespace/name` with the Hub's characters."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise PushError(f"--repo_id {repo_id!r} is invalid ({error}); accepted: 'org/name'.") from None
    if repo_id.count("/") != 1:
        raise PushError(
            f"--repo_id {repo_id!r} is invalid; accepted: 'org/name', a user or organisation and the model's name "
            "(letters, digits, '-', '_', '.')."
        )


def check_hub_access(repo_id: str, api: HfApi | None = None) -> str:
    """The logged-in user's name, after checking that the id is valid and that the user may write to its
    namespace; raises `PushError` before anything is created or uploaded."""
    check_repo_id(repo_id)
    api = api or HfApi()
    try:
        user = api.whoami()
    except Exception as error:  # no token, a revoked token, no network: all mean "cannot upload"
        raise PushError(
            f"not logged in to the Hub ({type(error).__name__}: {error}). Log in with `hf auth login` or set "
            "HF_TOKEN to a token with write access, then push again."
        ) from None
    namespaces = [user["name"], *(org["name"] for org in user.get("orgs", []))]
    namespace = repo_id.split("/")[0]
    if namespace not in namespaces:
        raise PushError(
            f"--repo_id {repo_id!r}: logged in as {user['name']!r}, who cannot create a repository under "
            f"{namespace!r}; accepted namespaces: {', '.join(namespaces)}."
        )
    return user["name"]


def check_checkpoint(folder: Path) -> dict[str, Any]:
    """The checkpoint's config.json, after refusing what must not be uploaded (see the module docstring)."""
    if not folder.is_dir():
        raise PushError(f"CHECKPOINT {str(folder)!r} is not a folder; accepted: a CRoPD checkpoint folder.")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise PushError(
            f"{folder} is not a CRoPD checkpoint: {', '.join(missing)} missing; accepted: a folder written by "
            "cropd-train (config.json, model.safetensors, preprocessor_config.json and the model code)."
        )
    try:
        config = json.loads((folder / "config.json").read_text())
    except ValueError as error:
        raise PushError(f"{folder / 'config.json'} is not valid JSON ({error}).") from None
    if config.get("model_type") != "cropd":
        raise PushError(
            f"{folder} is not a CRoPD checkpoint: config.json has model_type {config.get('model_type')!r}; "
            "accepted: 'cropd'."
        )
    pickles = sorted(
        path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.suffix.lower() in PICKLE_SUFFIXES
    )
    if pickles:
        raise PushError(
            f"{folder} holds {', '.join(pickles)}: pickle files, which run code when loaded. A CRoPD checkpoint "
            "holds its weights as safetensors only; remove those files (or push a clean copy of the folder)."
        )
    check_foundation_reference(folder, config.get("foundation_model_name_or_path"))
    return config


def check_foundation_reference(folder: Path, foundation: Any) -> None:
    """A Hub id, or a folder inside the checkpoint (`./foundation`) with its weights: anything else would not be
    found by whoever downloads the checkpoint."""
    if not isinstance(foundation, str) or not foundation:
        raise PushError(
            f"{folder / 'config.json'}: foundation_model_name_or_path={foundation!r}; accepted: a Hub id or "
            "'./foundation' (a folder inside the checkpoint)."
        )
    if foundation.startswith(("./", "../")):  # relative to the checkpoint folder (CRoPD's foundation_location)
        inside = (folder / foundation).resolve()
        if inside.is_relative_to(folder.resolve()):
            if not (inside / "config.json").is_file() or not list(inside.glob("*.safetensors")):
                raise PushError(
                    f"{folder}: foundation_model_name_or_path is {foundation!r}, but {inside} holds no config.json "
                    "and safetensors weights."
                )
            return
    elif not (os.path.isabs(foundation) or foundation.startswith((".", "~")) or os.path.isdir(foundation)):
        try:
            validate_repo_id(foundation)
            return
        except HFValidationError:
            pass  # neither a Hub id nor a folder inside: refused below
    raise PushError(
        f"{folder}: the foundation model is the local path {foundation!r}, outside the checkpoint: nobody who "
        "downloads it could load it. Upload the foundation model to the Hub and set foundation_model_name_or_path "
        "to its id, or copy it into the checkpoint as ./foundation (cropd-train does so for a local foundation "
        "model)."
    )


def pipeline_declaration() -> dict[str, dict[str, Any]]:
    """`custom_pipelines` of config.json for the robust pipeline, as `Pipeline.save_pretrained` writes it."""
    declaration = {}
    for task, info in RobustImageClassificationPipeline._registered_impl.items():
        implementation = info["impl"]
        declaration[task] = {
            **info,
            "impl": f"{implementation.__module__.split('.')[-1]}.{implementation.__name__}",
            "pt": [model_class.__name__ for model_class in info["pt"]],
        }
    return declaration


def declare_pipeline(folder: Path) -> bool:
    """Make the checkpoint `folder` declare the robust pipeline (`custom_pipelines` in config.json,
    pipeline_cropd.py and attacks.py beside it), so that `pipeline(model=folder, trust_remote_code=True)` runs it
    without cropd_hf; the weights are not touched. False when config.json already declared it."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    declared = config.get("custom_pipelines") == pipeline_declaration()
    if not declared:
        config["custom_pipelines"] = pipeline_declaration()
        # transformers' own layout of config.json, so a later save_pretrained rewrites it unchanged.
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    custom_object_save(RobustImageClassificationPipeline, folder)
    return not declared


def build_upload_folder(checkpoint: Path, staging: Path, repo_id: str) -> list[str]:
    """Copy `checkpoint` to `staging` as it will be uploaded to `repo_id`; what was changed is returned."""
    shutil.copytree(checkpoint, staging, ignore=shutil.ignore_patterns(*IGNORED))
    changes = []
    if declare_pipeline(staging):
        changes.append(f"declared the {TASK} pipeline (custom_pipelines in config.json, pipeline_cropd.py)")
    card = staging / "README.md"
    if card.is_file():
        text = card.read_text()
        replaced = CARD_PLACEHOLDER.sub(repo_id, text)
        if replaced != text:
            card.write_text(replaced)
            changes.append(f"README.md names the repository {repo_id}")
    return changes


def check_weights(folder: Path) -> str:
    """Check the weight files of `folder` against metrics.json's `weights_sha256`; what was checked is returned."""
    metrics_path = folder / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    expected = metrics.get("weights_sha256")
    if expected is None:
        return (
            "metrics.json records no weights_sha256 (a checkpoint saved before checksums were recorded): the "
            "weight files are uploaded unchecked"
        )
    try:
        verify_weight_checksums(folder, expected)
    except ValueError as error:
        raise PushError(f"refused: {error}. The checkpoint changed after training wrote metrics.json.") from None
    return f"weights match metrics.json's sha256 ({', '.join(sorted(expected))})"


def check_image(folder: Path, config: dict[str, Any]) -> tuple[PIL.Image.Image, str | None]:
    """An image to predict and its true label: a test image of the run's dataset when it is available offline,
    else a mid-grey image (no label) of the model's size."""
    metrics_path = folder / "metrics.json"
    dataset = json.loads(metrics_path.read_text()).get("dataset") if metrics_path.is_file() else None
    if dataset in OFFLINE_DATASETS:
        from cropd_hf.data import load_image_dataset

        test = load_image_dataset(dataset)["test"]
        return test[0]["image"], test.features["label"].int2str(test[0]["label"])
    size = config.get("image_size", 224)
    mode = "L" if config.get("num_channels", 3) == 1 else "RGB"
    return PIL.Image.fromarray(np.full((size, size), 128, dtype=np.uint8)).convert(mode), None


def check_loads_elsewhere(folder: Path, image: PIL.Image.Image) -> dict[str, str]:
    """Copy `folder` to a fresh temporary folder and load it there in a separate Python without cropd_hf, through
    AutoModelForImageClassification and the robust pipeline; the prediction on `image` is returned."""
    with tempfile.TemporaryDirectory(prefix="cropd-push-check-") as temporary:
        root = Path(temporary)
        copy = root / folder.name
        shutil.copytree(folder, copy)
        image.save(root / "image.png")
        (root / "check.py").write_text(CHECK_SCRIPT)
        # A fresh module cache: the copy's own code is what runs, never a cached one.
        env = {**os.environ, "HF_MODULES_CACHE": str(root / "modules")}
        completed = subprocess.run(
            [sys.executable, str(root / "check.py"), str(copy), str(root / "image.png"), TASK],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT_SECONDS,
        )
    if completed.returncode != 0:
        raise PushError(
            f"refused: the folder to upload does not load where cropd_hf is not installed "
            f"(trust_remote_code=True):\n{completed.stderr[-3000:]}"
        )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def file_list(folder: Path) -> list[tuple[str, int]]:
    return [
        (path.relative_to(folder).as_posix(), path.stat().st_size)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    ]


def human_size(size: int) -> str:
    for unit in ("B", "kB", "MB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def upload(folder: Path, repo_id: str, private: bool, api: HfApi | None = None) -> str:
    """Create `repo_id` (private when asked) and upload `folder` to it; the commit's URL is returned."""
    api = api or HfApi()
    # Without --private, the Hub's default: public, unless the organisation makes new repositories private.
    api.create_repo(repo_id, repo_type="model", private=True if private else None, exist_ok=True)
    if private and not api.model_info(repo_id).private:
        # create_repo leaves an existing repository as it is: --private would silently publish.
        raise PushError(
            f"--private: {repo_id} already exists and is public; nothing was uploaded. Make it private on the Hub "
            "(Settings) or push without --private."
        )
    commit = api.upload_folder(
        repo_id=repo_id, repo_type="model", folder_path=folder, commit_message="Upload CRoPD model"
    )
    return commit.commit_url


def push_checkpoint(
    checkpoint: Path, repo_id: str, private: bool = False, dry_run: bool = False, api: HfApi | None = None
) -> None:
    """Check `checkpoint`, build and verify the folder to upload, and upload it to `repo_id` (not with
    `dry_run`); what is done is printed. Raises `PushError` at the first problem, before any upload."""
    checkpoint = Path(checkpoint)
    check_repo_id(repo_id)
    if not dry_run:
        print(f"logged in to the Hub as {check_hub_access(repo_id, api)}")
    config = check_checkpoint(checkpoint)
    with tempfile.TemporaryDirectory(prefix="cropd-push-") as temporary:
        staging = Path(temporary) / checkpoint.resolve().name
        for change in build_upload_folder(checkpoint, staging, repo_id):
            print(f"in the upload: {change}")
        print(check_weights(staging))
        image, label = check_image(staging, config)
        prediction = check_loads_elsewhere(staging, image)
        truth = f" (true label {label})" if label is not None else " (a grey image)"
        print(
            f"loaded in a fresh folder without cropd_hf ({prediction['model_class']}, "
            f"{prediction['pipeline_class']}): predicts {prediction['clean']}{truth}, "
            f"{prediction['attacked_with_purifier']} under FGSM with the purifier"
        )
        files = file_list(staging)
        visibility = "private" if private else "the Hub's default visibility"
        print(f"{'would upload' if dry_run else 'uploading'} to {repo_id} ({visibility}):")
        for name, size in files:
            print(f"  {human_size(size):>9}  {name}")
        print(f"  {human_size(sum(size for _, size in files)):>9}  in {len(files)} files")
        if dry_run:
            print("dry run: nothing was uploaded")
            return
        print(f"uploaded: {upload(staging, repo_id, private, api)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a CRoPD checkpoint folder (a cropd-train output)")
    parser.add_argument("--repo_id", required=True, help="org/name of the Hub model repository")
    parser.add_argument(
        "--private", action="store_true", help="create the repository private (an existing one must be private)"
    )
    parser.add_argument("--dry_run", action="store_true", help="build and check the upload, list it, upload nothing")
    args = parser.parse_args(argv)
    try:
        push_checkpoint(args.checkpoint, args.repo_id, private=args.private, dry_run=args.dry_run)
    except PushError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
