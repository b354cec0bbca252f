"""``inv deploy`` and ``inv preview`` end to end: the real ``inv`` command
line and the real Pulumi CLI against a moto-backed S3 backend, deploying
the ``yaml-app`` fixture (no provider plugin needed).
"""

from __future__ import annotations

import json
import re

import pytest
from conftest import assert_clean_failure
from deploy_support import (
    PROJECT,
    SECRET_TOKEN,
    checkpoint_key,
    copy_project,
    init_stack,
    keys_under,
    output_of,
    pulumi_in,
    read_checkpoint,
)

SUMMARY = re.compile(r"^deploy staging: (\d+) created, (\d+) updated, "
                     r"(\d+) deleted, (\d+) unchanged$", re.MULTILINE)


@pytest.fixture
def project(ws, s3, pulumi_cli, tmp_path):
    folder = copy_project(tmp_path)
    init_stack(ws, s3, folder, api_token="initial-token")
    return folder


def summary(done) -> tuple[int, int, int, int]:
    match = SUMMARY.search(done.stdout)
    assert match, done.stdout + done.stderr
    return tuple(int(n) for n in match.groups())


def test_deploy_writes_state_and_a_second_deploy_changes_nothing(
        ws, s3, project):
    bucket = ws.env["STATE_BUCKET"]
    secret = ws.inv("config.secret", "--stack", "staging", "--project",
                    str(project), "apiToken", input=SECRET_TOKEN + "\n")
    assert secret.returncode == 0, secret.stderr

    first = ws.inv("deploy", "--stack", "staging", "--project",
                   str(project))
    assert first.returncode == 0, first.stdout + first.stderr
    created, updated, deleted, unchanged = summary(first)
    # The stack resource and the two Note components.
    assert (created, updated, deleted) == (3, 0, 0)

    state = read_checkpoint(s3, bucket)
    urns = [r["urn"] for r in state["checkpoint"]["latest"]["resources"]]
    assert any(u.endswith("::greetingNote") for u in urns)
    history = keys_under(s3, bucket, f".pulumi/history/{PROJECT}/staging/")
    assert any(k.endswith(".history.json") for k in history)

    outputs = json.loads(pulumi_in(
        ws, project, "stack", "output", "--stack", "staging", "--json",
        "--show-secrets").stdout)
    assert outputs["greeting"] == "hello"
    assert outputs["token"] == SECRET_TOKEN

    second = ws.inv("deploy", "--stack", "staging", "--project",
                    str(project))
    assert second.returncode == 0, second.stdout + second.stderr
    assert summary(second) == (0, 0, 0, 3)

    # The secret is encrypted at rest and the passphrase is never shown.
    stack_file = (project / "Pulumi.staging.yaml").read_text()
    assert "apiToken" in stack_file and "secure:" in stack_file
    assert SECRET_TOKEN not in stack_file
    raw_state = s3.get_object(Bucket=bucket, Key=checkpoint_key())[
        "Body"].read().decode()
    assert SECRET_TOKEN not in raw_state
    assert "ciphertext" in raw_state
    shown = output_of(secret, first, second)
    assert ws.env["PULUMI_CONFIG_PASSPHRASE"] not in shown
    assert SECRET_TOKEN not in shown


def test_deploy_from_another_directory_with_only_ci_variables(
        ws, s3, project, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert not (ws.root / ".env").exists()
    wanted = ("PATH", "HOME", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
              "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "STATE_BUCKET",
              "PULUMI_CONFIG_PASSPHRASE")
    ci_env = {name: ws.env[name] for name in wanted}

    done = ws.inv("deploy", "--stack", "staging", "--project",
                  "../notes-app", env=ci_env, cwd=elsewhere)
    assert done.returncode == 0, done.stdout + done.stderr
    assert summary(done)[0] == 3
    s3.head_object(Bucket=ws.env["STATE_BUCKET"], Key=checkpoint_key())
    assert ci_env["PULUMI_CONFIG_PASSPHRASE"] not in output_of(done)


def test_mistyped_stack_fails_before_pulumi_and_creates_nothing(
        ws, s3, project):
    done = ws.inv("deploy", "--stack", "stagin", "--project",
                  str(project))
    line = assert_clean_failure(done, "stack 'stagin' does not exist",
                                "'staging'")
    assert line.startswith("error: ")
    keys = keys_under(s3, ws.env["STATE_BUCKET"], ".pulumi/")
    assert not [k for k in keys if "stagin." in k or "/stagin/" in k]
    assert not (project / "Pulumi.stagin.yaml").exists()


def test_deploy_without_a_passphrase_fails_instead_of_prompting(
        ws, s3, project):
    env = dict(ws.env)
    del env["PULUMI_CONFIG_PASSPHRASE"]
    done = ws.inv("deploy", "--stack", "staging", "--project",
                  str(project), env=env, timeout=60)
    assert_clean_failure(done, "PULUMI_CONFIG_PASSPHRASE")
    assert not keys_under(s3, ws.env["STATE_BUCKET"],
                          f".pulumi/history/{PROJECT}/")


def test_preview_lists_planned_changes_and_changes_nothing(
        ws, s3, project):
    for args in (("preview",), ("deploy", "--preview")):
        done = ws.inv(*args, "--stack", "staging", "--project",
                      str(project))
        assert done.returncode == 0, done.stdout + done.stderr
        assert re.search(r"create\s+greetingNote \(notes:index:Note\)",
                         done.stdout), done.stdout
        assert re.search(r"^preview staging: 3 to create, 0 to update, "
                         r"0 to delete, 0 unchanged$", done.stdout,
                         re.MULTILINE), done.stdout
    assert not keys_under(s3, ws.env["STATE_BUCKET"],
                          f".pulumi/history/{PROJECT}/")
    state = read_checkpoint(s3, ws.env["STATE_BUCKET"])
    assert not (state["checkpoint"].get("latest") or {}).get("resources")


def test_failed_deploy_keeps_the_pulumi_exit_code(ws, s3, project):
    program = project / "Pulumi.yaml"
    program.write_text(program.read_text().replace(
        "      text: ${greeting}",
        "      text: ${greeting}\n      colour: red"))
    direct = pulumi_in(ws, project, "up", "--stack", "staging", "--yes",
                       check=False)
    assert direct.returncode != 0

    done = ws.inv("deploy", "--stack", "staging", "--project",
                  str(project))
    assert done.returncode == direct.returncode
    assert (f"deploy of stack 'staging' failed (pulumi exit "
            f"{direct.returncode})") in done.stderr
    assert "Traceback" not in done.stderr
    assert ws.env["PULUMI_CONFIG_PASSPHRASE"] not in output_of(done)
