"""Copy this package's self-contained remote-code files into CRoPD checkpoint folders.

    python -m cropd_hf.refresh_remote_code training/checkpoints/embedded [MORE ...]

A checkpoint carries `configuration_cropd.py`, `checks.py`, `modeling_cropd.py` and `image_processing_cropd.py`
(and `pipeline_cropd.py` with `attacks.py` when it declares the pipeline) so that it loads with
`trust_remote_code=True` without cropd_hf. After a change to those files, this brings shipped checkpoints up to
date; the weights are not touched.
"""

import argparse
import shutil
import sys
from pathlib import Path

REMOTE_CODE = (
    "configuration_cropd.py",
    "checks.py",  # imported by modeling_cropd.py and attacks.py
    "modeling_cropd.py",
    "image_processing_cropd.py",
    "pipeline_cropd.py",
    "attacks.py",  # imported by pipeline_cropd.py
)
REQUIRED = REMOTE_CODE[:4]


def refresh(checkpoint: Path) -> list[str]:
    """Overwrite the remote-code files of `checkpoint` with the library's; the names written are returned."""
    if not (checkpoint / "config.json").is_file():
        raise ValueError(f"{checkpoint} is not a checkpoint folder (no config.json)")
    source = Path(__file__).parent
    written = []
    for name in REMOTE_CODE:
        if name in REQUIRED or (checkpoint / name).exists():
            shutil.copyfile(source / name, checkpoint / name)
            written.append(name)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint folders")
    args = parser.parse_args(argv)
    for checkpoint in args.checkpoints:
        try:
            print(f"{checkpoint}: {', '.join(refresh(checkpoint))}")
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None


if __name__ == "__main__":
    main()
