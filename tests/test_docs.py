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
