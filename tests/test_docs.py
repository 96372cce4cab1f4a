"""What README and docs say agrees with the reports and stays inside the repository."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_readme_results_table_is_the_one_its_reports_generate():
    completed = subprocess.run(
        [sys.executable, str(REPO / "training" / "results_table.py"), "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr[-2000:]


def test_no_tracked_file_points_outside_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    offending = []
    for name in files:
        path = REPO / name
        if path.suffix not in {".py", ".md", ".yaml", ".toml", ".txt", ".json"} or not path.is_file():
            continue
        if path == Path(__file__).resolve():  # this test names what it looks for
            continue
        text = path.read_text(errors="replace")
        if "../shared" in text or "DESIGN.md" in text:
            offending.append(name)
    assert offending == []


def test_the_readme_says_how_to_get_the_cpu_torch_wheel_and_both_commands_install_torch_first():
    readme = (REPO / "README.md").read_text()
    # On plain PyPI `pip install torch==2.13.0` is the multi-GB CUDA build: the page says how to get the CPU wheel.
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in readme.replace("\n", " ")
    commands = [line for line in readme.splitlines() if line.startswith("pip install ")]
    assert len(commands) == 2, commands  # the main job and the tests, nothing else to set up
    assert all(command.startswith("pip install torch==2.13.0 && pip install -e ") for command in commands)


def test_the_space_front_matter_lists_the_hub_models_the_app_loads():
    import model_loading  # space_app/ is on the path through conftest.py
    from huggingface_hub import SpaceCard

    declared = SpaceCard.load(REPO / "space_app" / "README.md").data.models
    loaded = [entry.hub_id for entry in model_loading.SHIPPED] + [model_loading.UNDEFENDED_HUB_ID]
    assert sorted(declared) == sorted(loaded)
