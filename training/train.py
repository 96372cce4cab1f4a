"""Train a CRoPD model: `accelerate launch training/train.py [--config training/configs/<run>.yaml]`.

The training loop is `cropd_hf/training/train.py` (installed, also as the `cropd-train` command); `--help` lists
every option.
"""

from cropd_hf.training.train import main

if __name__ == "__main__":
    main()
