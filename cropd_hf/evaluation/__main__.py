"""`python -m cropd_hf.evaluation` / `accelerate launch -m cropd_hf.evaluation`: the `cropd-eval` command."""

from cropd_hf.evaluation.cli import main

main()
