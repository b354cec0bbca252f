"""The task list: fast to load and self-explanatory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("boto3", "botocore", "pulumi", "pulumi_aws", "dotenv")


def test_loading_tasks_imports_no_heavy_library():
    probe = ("import sys, tasks; "
             f"print([m for m in {HEAVY!r} if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO,
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_every_task_has_a_one_line_summary():
    done = subprocess.run([str(Path(sys.executable).parent / "inv"),
                           "--list"], cwd=REPO, capture_output=True,
                          text=True, check=True)
    rows = [ln for ln in done.stdout.splitlines()[2:] if ln.strip()]
    names = [ln.split()[0] for ln in rows if ln.startswith("  ")
             and not ln.startswith("    ")]
    for expected in ("bootstrap", "doctor", "sandbox.up", "sandbox.down"):
        assert expected in names
    # A task without a docstring shows its name alone on its row.
    assert all(len(ln.split()) > 1 for ln in rows
               if ln.startswith("  ") and not ln.startswith("    "))


def test_statekeeper_command_runs_the_tasks_from_any_directory(tmp_path):
    command = Path(sys.executable).parent / "statekeeper"
    listed = subprocess.run([str(command), "--list"], cwd="/",
                            capture_output=True, text=True, check=True)
    assert "sandbox.status" in listed.stdout
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "STATEKEEPER_SANDBOX_DIR": str(tmp_path / "sandbox")}
    status = subprocess.run([str(command), "sandbox.status"], cwd="/",
                            env=env, capture_output=True, text=True)
    assert status.returncode == 1
    assert status.stdout.strip() == (
        "sandbox not running (inv sandbox.up starts it)")
