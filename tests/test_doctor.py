"""``inv doctor`` after a real bootstrap, and each misconfiguration it must
catch before a pipeline trips over it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import FIXTURES

BUCKET = "test-pulumi-state"


@pytest.fixture
def ready(ws, tmp_path, pulumi_cli):
    """A bootstrapped backend with a `staging` stack."""
    project = tmp_path / "yaml-app"
    shutil.copytree(FIXTURES / "yaml-app", project)
    ws.env["PULUMI_PROJECT_DIR"] = str(project)
    done = ws.inv("bootstrap")
    assert done.returncode == 0, done.stderr
    return ws


def checks(done) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(done.stdout)["checks"]}


def test_doctor_passes_after_bootstrap(ready):
    done = ready.inv("doctor", "--json")

    assert done.returncode == 0, done.stdout + done.stderr
    found = checks(done)
    assert all(c["ok"] for c in found.values())
    assert set(found) == {"backend URL", "credentials", "bucket",
                          "pulumi CLI", "secrets provider", "locks",
                          "pending operations", "stack staging"}
    assert found["pulumi CLI"]["detail"] == "pulumi v3.260.0"
    text = ready.inv("doctor")
    assert text.returncode == 0
    assert ready.env["PULUMI_CONFIG_PASSPHRASE"] not in text.stdout


def test_wrong_stack_name_gets_the_closest_names(ready):
    done = ready.inv("doctor", "--stack", "stg")

    assert done.returncode == 1
    line = [ln for ln in done.stdout.splitlines() if "stack stg" in ln][0]
    assert "stack 'stg' does not exist" in line
    assert "did you mean 'staging'?" in done.stdout
    assert "1 of 8 checks failed (first: stack stg)" in done.stderr


def test_missing_backend_url(ready):
    del ready.env["STATE_BUCKET"]

    done = ready.inv("doctor", "--json")

    assert done.returncode == 1
    found = checks(done)
    assert not found["backend URL"]["ok"]
    assert "neither PULUMI_BACKEND_URL nor STATE_BUCKET" in (
        found["backend URL"]["detail"])
    # Nothing downstream is checked against a guessed bucket.
    assert found["bucket"]["detail"].startswith("not checked")


def test_missing_passphrase(ready):
    del ready.env["PULUMI_CONFIG_PASSPHRASE"]

    done = ready.inv("doctor", "--json")

    assert done.returncode == 1
    check = checks(done)["secrets provider"]
    assert not check["ok"]
    assert "no Pulumi passphrase" in check["detail"]
    assert "PULUMI_CONFIG_PASSPHRASE_FILE" in check["detail"]
    assert "awskms://" in check["fix"]


def test_non_compliant_bucket_names_each_setting(ready, s3):
    s3.delete_bucket_encryption(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET,
                             VersioningConfiguration={"Status": "Suspended"})

    done = ready.inv("doctor", "--json")

    assert done.returncode == 1
    check = checks(done)["bucket"]
    assert check["detail"] == (f"bucket {BUCKET} is not compliant: "
                               "versioning, default encryption")
    assert "inv bootstrap" in check["fix"]


def test_bad_credentials(ready, moto):
    """moto accepts any key until IAM is enforced; then unknown keys are
    rejected as they are by AWS."""
    moto.enforce_iam()
    try:
        done = ready.inv("doctor", "--json")
    finally:
        moto.relax_iam()

    assert done.returncode == 1
    check = checks(done)["credentials"]
    assert not check["ok"]
    assert "AWS rejected the credentials" in check["detail"]


def test_unreachable_endpoint(ready):
    from conftest import free_port

    ready.env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"

    done = ready.inv("doctor", "--json")

    assert done.returncode == 1
    check = checks(done)["credentials"]
    assert check["detail"].startswith("cannot reach http://127.0.0.1:")


def test_stale_lock_is_reported_with_the_command_that_clears_it(ready, s3):
    from datetime import timedelta

    from test_locks import dead_pid, write_lock

    write_lock(s3, pid=dead_pid(), hostname=__import__("socket")
               .gethostname(), age=timedelta(minutes=1))

    done = ready.inv("doctor", "--json")

    assert done.returncode == 1
    check = checks(done)["locks"]
    assert "1 stale lock(s), first on stack staging" in check["detail"]
    assert "process gone" in check["detail"]
    assert check["fix"] == ("run 'inv locks.clear --stack staging "
                            "--project-name yaml-app'")


def test_interrupted_update_is_reported(ready, s3):
    project = Path(ready.env["PULUMI_PROJECT_DIR"])
    ready.pulumi("config", "set", "--secret", "--stack", "staging",
                 "apiToken", "tok-123", cwd=project)
    ready.pulumi("up", "--yes", "--stack", "staging", cwd=project)
    key = ".pulumi/stacks/yaml-app/staging.json"
    doc = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    root = doc["checkpoint"]["latest"]["resources"][0]
    doc["checkpoint"]["latest"]["pending_operations"] = [
        {"resource": root, "type": "creating"}]
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(doc))

    done = ready.inv("doctor", "--json")

    assert done.returncode == 1
    check = checks(done)["pending operations"]
    assert check["detail"] == (
        "stack yaml-app/staging has 1 interrupted operation(s): "
        f"creating {root['urn']}")
    assert "pulumi refresh --stack staging --clear-pending-creates" in (
        check["fix"])
