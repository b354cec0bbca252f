"""`inv stack.export` and `inv stack.import`: a file goes out private and
comes back in only after it has been checked, so a corrupt or wrong-stack
file is rejected before anything is written.
"""

from __future__ import annotations

import json
import stat

from conftest import assert_clean_failure
from test_migrate import copy_project, deploy, pulumi, target_url

CHECKPOINT = ".pulumi/stacks/yaml-app/{}.json"


def deployed(ws, s3, tmp_path, *stacks: str):
    s3.create_bucket(Bucket="test-pulumi-state")
    project = copy_project(tmp_path)
    for stack in stacks:
        deploy(ws, project, target_url(ws), stack=stack)
    return project


def checkpoint(s3, stack: str) -> bytes:
    return s3.get_object(Bucket="test-pulumi-state",
                         Key=CHECKPOINT.format(stack))["Body"].read()


def test_export_then_import_round_trips(ws, s3, pulumi_cli, tmp_path):
    project = deployed(ws, s3, tmp_path, "staging")
    file = tmp_path / "staging.json"

    done = ws.inv("stack.export", "--stack", "staging", "--project",
                  str(project), "--file", str(file))

    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    doc = json.loads(file.read_text())
    assert doc["version"] == 3
    assert len(doc["deployment"]["resources"]) >= 1
    assert ws.env["PULUMI_CONFIG_PASSPHRASE"] not in file.read_text()
    assert "tok-" not in file.read_text()  # secrets stay encrypted

    done = ws.inv("stack.import", "--stack", "staging", "--project",
                  str(project), "--file", str(file))

    assert done.returncode == 0, done.stderr
    assert "imported" in done.stdout
    pulumi(ws, project, "preview", "--expect-no-changes", "--stack",
           "staging", backend=target_url(ws))


def test_export_to_stdout_is_pure_json(ws, s3, pulumi_cli, tmp_path):
    project = deployed(ws, s3, tmp_path, "staging")

    done = ws.inv("stack.export", "--stack", "staging", "--project",
                  str(project))

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["deployment"]["resources"]
    assert "exported stack 'staging'" in done.stderr


def test_corrupt_file_is_rejected_before_anything_is_written(
        ws, s3, pulumi_cli, tmp_path):
    project = deployed(ws, s3, tmp_path, "staging")
    before = checkpoint(s3, "staging")
    file = tmp_path / "broken.json"
    file.write_text('{"version": 3, "deployment": {"resources": [')

    done = ws.inv("stack.import", "--stack", "staging", "--project",
                  str(project), "--file", str(file))

    assert_clean_failure(done, "not valid JSON", str(file))
    assert checkpoint(s3, "staging") == before

    file.write_text(json.dumps({"version": 99, "deployment": {}}))
    done = ws.inv("stack.import", "--stack", "staging", "--project",
                  str(project), "--file", str(file))
    assert_clean_failure(done, "deployment version 99")
    assert checkpoint(s3, "staging") == before


def test_export_of_another_stack_is_refused(ws, s3, pulumi_cli, tmp_path):
    project = deployed(ws, s3, tmp_path, "staging", "prod")
    file = tmp_path / "staging.json"
    assert ws.inv("stack.export", "--stack", "staging", "--project",
                  str(project), "--file", str(file)).returncode == 0
    before = checkpoint(s3, "prod")

    done = ws.inv("stack.import", "--stack", "prod", "--project",
                  str(project), "--file", str(file))

    assert done.returncode == 3
    assert_clean_failure(done, "stack 'staging'", "not 'prod'")
    assert checkpoint(s3, "prod") == before


def test_import_needs_an_existing_stack_and_a_file(ws, s3, pulumi_cli,
                                                   tmp_path):
    project = deployed(ws, s3, tmp_path, "staging")
    file = tmp_path / "staging.json"
    assert ws.inv("stack.export", "--stack", "staging", "--project",
                  str(project), "--file", str(file)).returncode == 0
    doc = json.loads(file.read_text())
    text = json.dumps(doc).replace("urn:pulumi:staging::",
                                   "urn:pulumi:stagin::")
    (tmp_path / "stagin.json").write_text(text)

    done = ws.inv("stack.import", "--stack", "stagin", "--project",
                  str(project), "--file", str(tmp_path / "stagin.json"))
    assert_clean_failure(done, "'stagin' does not exist", "staging")

    done = ws.inv("stack.import", "--stack", "staging", "--project",
                  str(project))
    assert_clean_failure(done, "--file is required")
    done = ws.inv("stack.import", "--stack", "staging", "--project",
                  str(project), "--file", str(tmp_path / "missing.json"))
    assert_clean_failure(done, "does not exist")
