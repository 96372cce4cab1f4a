"""Robustness evaluation of CRoPD checkpoints: attack suite, AutoAttack-style worst case, sanity checks.

    accelerate launch training/evaluate_robustness.py --model outputs/embedded --transfer_from outputs/embedded-identity

The same as the `cropd-eval` console script; `--help` lists every option and its default. The code lives in
`cropd_hf/evaluation/` (cli.py). (Not named evaluate.py: a script's folder comes first on sys.path, so that name would
hide the Hugging Face `evaluate` library from every script in training/.)
"""

from cropd_hf.evaluation import main

if __name__ == "__main__":
    main()
