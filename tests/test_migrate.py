"""`inv migrate`: live stacks move between backends with their resources,
outputs and secret config intact, and nothing moves when it is unsafe.

Every test deploys the YAML fixture with the real Pulumi CLI, to a
`file://` backend or a bucket of the moto server, then runs the real
`inv migrate` command line.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from pathlib import Path

from conftest import FIXTURES, assert_clean_failure

TOKEN = "tok-" + secrets.token_hex(6)


def copy_project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    shutil.copytree(FIXTURES / "yaml-app", project)
    return project


def pulumi(ws, project: Path, *args: str, backend: str,
           passphrase: str | None = None, check: bool = True,
           input: str = "") -> subprocess.CompletedProcess:
    env = dict(ws.env)
    env["PATH"] = f"{ws.root / '.tools' / 'bin'}:{env['PATH']}"
    env["PULUMI_BACKEND_URL"] = backend
    if passphrase is not None:
        env["PULUMI_CONFIG_PASSPHRASE"] = passphrase
    done = subprocess.run(["pulumi", *args, "--non-interactive"],
                          cwd=project, env=env, input=input, text=True,
                          capture_output=True, timeout=300)
    assert not check or done.returncode == 0, (args, done.stderr)
    return done


def deploy(ws, project: Path, backend: str, *, stack: str = "staging",
           passphrase: str | None = None) -> None:
    run = dict(backend=backend, passphrase=passphrase)
    pulumi(ws, project, "stack", "init", stack, **run)
    pulumi(ws, project, "config", "set", "--secret", "apiToken", TOKEN,
           "--stack", stack, **run)
    pulumi(ws, project, "config", "set", "greeting", "bonjour", "--stack",
           stack, **run)
    pulumi(ws, project, "up", "--yes", "--stack", stack, **run)


def state_of(ws, project: Path, backend: str, stack: str = "staging",
             passphrase: str | None = None) -> dict:
    """URNs, outputs (secrets shown) and decrypted config of a stack."""
    run = dict(backend=backend, passphrase=passphrase)
    exported = json.loads(pulumi(ws, project, "stack", "export", "--stack",
                                 stack, **run).stdout)
    outputs = json.loads(pulumi(ws, project, "stack", "output", "--json",
                                "--show-secrets", "--stack", stack,
                                **run).stdout)
    config = json.loads(pulumi(ws, project, "config", "--json",
                               "--show-secrets", "--stack", stack,
                               **run).stdout)
    return {
        "urns": [r["urn"] for r in exported["deployment"]["resources"]],
        "outputs": outputs,
        "config": config,
    }


def target_url(ws) -> str:
    return ws.settings().backend_url


def keys(s3, bucket: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_file_backend_to_s3_keeps_resources_outputs_and_secrets(
        ws, s3, pulumi_cli, tmp_path):
    s3.create_bucket(Bucket="test-pulumi-state")
    project = copy_project(tmp_path)
    source = f"file://{tmp_path / 'file-state'}"
    (tmp_path / "file-state").mkdir()
    old_passphrase = "old-" + secrets.token_hex(8)
    deploy(ws, project, source, passphrase=old_passphrase)
    before = state_of(ws, project, source, passphrase=old_passphrase)
    old_config = (project / "Pulumi.staging.yaml").read_text()
    passphrase_file = tmp_path / "old-passphrase"
    passphrase_file.write_text(old_passphrase + "\n")

    done = ws.inv("migrate", "--stack", "staging", "--from", source,
                  "--project", str(project), "--from-passphrase-file",
                  str(passphrase_file))

    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "migrate: 1 migrated" in done.stdout
    assert "re-encrypted with the target's passphrase" in done.stdout
    for secret in (TOKEN, old_passphrase, ws.env["PULUMI_CONFIG_PASSPHRASE"]):
        assert secret not in output
    after = state_of(ws, project, target_url(ws))
    assert after == before
    assert before["outputs"]["token"] == TOKEN
    # The config file now opens with the target's passphrase; the old one
    # is kept beside it.
    assert (project / "Pulumi.staging.yaml.pre-migrate").read_text() == \
        old_config
    assert (project / "Pulumi.staging.yaml").read_text() != old_config
    # A second deploy on the target changes nothing.
    pulumi(ws, project, "up", "--yes", "--expect-no-changes", "--stack",
           "staging", backend=target_url(ws))
    # The source was not asked to go, so it is still there, unchanged.
    shutil.copy(project / "Pulumi.staging.yaml.pre-migrate",
                project / "Pulumi.staging.yaml")
    assert state_of(ws, project, source, passphrase=old_passphrase) == before


def test_bucket_to_bucket_with_all_and_remove_source(ws, s3, pulumi_cli,
                                                     tmp_path):
    for bucket in ("old-state", "test-pulumi-state"):
        s3.create_bucket(Bucket=bucket)
    project = copy_project(tmp_path)
    settings = ws.settings(STATE_BUCKET="old-state")
    deploy(ws, project, settings.backend_url)
    before = state_of(ws, project, settings.backend_url)

    done = ws.inv("migrate", "--all", "--from", "s3://old-state",
                  "--project", str(project), "--remove-source")

    assert done.returncode == 0, done.stderr
    assert "migrate: 1 migrated" in done.stdout
    assert state_of(ws, project, target_url(ws)) == before
    pulumi(ws, project, "preview", "--expect-no-changes", "--stack",
           "staging", backend=target_url(ws))
    # The source stack is gone; Pulumi keeps its .json.bak and backups.
    assert ".pulumi/stacks/yaml-app/staging.json" not in keys(s3,
                                                               "old-state")
    listed = pulumi(ws, project, "stack", "ls", "--json",
                    backend=settings.backend_url)
    assert json.loads(listed.stdout) == []
    assert any(k.endswith("stacks/yaml-app/staging.json")
               for k in keys(s3, "test-pulumi-state"))


def test_refuses_a_target_stack_that_has_resources(ws, s3, pulumi_cli,
                                                   tmp_path):
    for bucket in ("old-state", "test-pulumi-state"):
        s3.create_bucket(Bucket=bucket)
    project = copy_project(tmp_path)
    deploy(ws, project, ws.settings(STATE_BUCKET="old-state").backend_url)
    (project / "Pulumi.staging.yaml").unlink()
    deploy(ws, project, target_url(ws))
    checkpoint = s3.get_object(Bucket="test-pulumi-state",
                               Key=".pulumi/stacks/yaml-app/staging.json")
    before = checkpoint["Body"].read()

    done = ws.inv("migrate", "--stack", "staging", "--from",
                  "s3://old-state", "--project", str(project))

    assert done.returncode == 3
    assert_clean_failure(done, "already exists", "--force")
    after = s3.get_object(Bucket="test-pulumi-state",
                          Key=".pulumi/stacks/yaml-app/staging.json")
    assert after["Body"].read() == before

    forced = ws.inv("migrate", "--stack", "staging", "--from",
                    "s3://old-state", "--project", str(project), "--force")
    assert forced.returncode == 0, forced.stderr
    assert "it had 1 resources" in forced.stdout
    pulumi(ws, project, "preview", "--expect-no-changes", "--stack",
           "staging", backend=target_url(ws))


def test_dry_run_reports_and_writes_nothing(ws, s3, pulumi_cli, tmp_path):
    s3.create_bucket(Bucket="test-pulumi-state")
    project = copy_project(tmp_path)
    source = f"file://{tmp_path / 'file-state'}"
    (tmp_path / "file-state").mkdir()
    deploy(ws, project, source)
    config = (project / "Pulumi.staging.yaml").read_bytes()
    files = sorted(p.name for p in project.iterdir())

    done = ws.inv("migrate", "--stack", "staging", "--from", source,
                  "--project", str(project), "--dry-run")

    assert done.returncode == 0, done.stderr
    assert "would migrate" in done.stdout
    assert "target absent" in done.stdout
    assert "migrate (dry run): 1 would migrate" in done.stdout
    assert keys(s3, "test-pulumi-state") == []
    assert (project / "Pulumi.staging.yaml").read_bytes() == config
    assert sorted(p.name for p in project.iterdir()) == files


def test_pending_operations_block_migration_until_allowed(
        ws, s3, pulumi_cli, tmp_path):
    from statekeeper import locks

    for bucket in ("old-state", "test-pulumi-state"):
        s3.create_bucket(Bucket=bucket)
    project = copy_project(tmp_path)
    source_settings = ws.settings(STATE_BUCKET="old-state")
    deploy(ws, project, source_settings.backend_url)
    key = ".pulumi/stacks/yaml-app/staging.json"
    doc = json.loads(s3.get_object(Bucket="old-state", Key=key)["Body"]
                     .read())
    latest = doc["checkpoint"]["latest"]
    root = latest["resources"][0]
    latest["pending_operations"] = [{"resource": root, "type": "updating"}]
    s3.put_object(Bucket="old-state", Key=key, Body=json.dumps(doc))

    pending = locks.stacks_with_pending_operations(source_settings)
    assert [(p.project, p.stack) for p in pending] == [("yaml-app",
                                                        "staging")]
    assert pending[0].operations == [f"updating {root['urn']}"]
    assert "pulumi refresh" in pending[0].fix
    assert locks.stacks_with_pending_operations(ws.settings()) == []

    done = ws.inv("migrate", "--stack", "staging", "--from",
                  "s3://old-state", "--project", str(project))
    assert_clean_failure(done, "pending operation", root["urn"],
                         "--allow-pending")
    assert keys(s3, "test-pulumi-state") == []

    done = ws.inv("migrate", "--stack", "staging", "--from",
                  "s3://old-state", "--project", str(project),
                  "--allow-pending")
    assert done.returncode == 0, done.stderr
    assert root["urn"] in done.stderr
    assert "dropped 1 pending" in done.stderr


def test_unknown_source_stack_is_named_with_a_guess(ws, s3, pulumi_cli,
                                                    tmp_path):
    s3.create_bucket(Bucket="test-pulumi-state")
    project = copy_project(tmp_path)
    source = f"file://{tmp_path / 'file-state'}"
    (tmp_path / "file-state").mkdir()
    deploy(ws, project, source)

    done = ws.inv("migrate", "--stack", "stg", "--from", source,
                  "--project", str(project))

    assert_clean_failure(done, "'stg' does not exist", "staging")


def test_same_backend_and_bad_urls_are_refused(ws, tmp_path):
    project = copy_project(tmp_path)
    done = ws.inv("migrate", "--stack", "staging", "--from",
                  "s3://test-pulumi-state", "--project", str(project))
    assert_clean_failure(done, "same backend")
    done = ws.inv("migrate", "--stack", "staging", "--from", "ftp://x",
                  "--project", str(project))
    assert_clean_failure(done, "not a backend URL")
    done = ws.inv("migrate", "--from", "file:///tmp/x", "--project",
                  str(project))
    assert_clean_failure(done, "--stack", "--all")


def test_structured_config_with_nested_secrets_is_re_encrypted(
        ws, s3, pulumi_cli, tmp_path):
    s3.create_bucket(Bucket="test-pulumi-state")
    project = copy_project(tmp_path)
    source = f"file://{tmp_path / 'file-state'}"
    (tmp_path / "file-state").mkdir()
    deploy(ws, project, source)
    run = dict(backend=source)
    pulumi(ws, project, "config", "set", "--path", "--secret",
           "db.password", "pw-" + TOKEN, "--stack", "staging", **run)
    pulumi(ws, project, "config", "set", "--path", "db.hosts[0]", "a.local",
           "--stack", "staging", **run)
    pulumi(ws, project, "config", "set", "--path", "--secret",
           'db.hosts[1]', "hidden.local", "--stack", "staging", **run)
    pulumi(ws, project, "config", "set", "--secret", "multiLine",
           "--stack", "staging", input="line one\nline two\n", **run)
    before = state_of(ws, project, source)

    done = ws.inv("migrate", "--stack", "staging", "--from", source,
                  "--project", str(project))

    assert done.returncode == 0, done.stderr
    assert "4 keys copied, 4 secret value(s) re-encrypted" in done.stdout
    assert "pw-" + TOKEN not in done.stdout + done.stderr
    assert state_of(ws, project, target_url(ws)) == before


def test_backend_urls_and_source_passphrase(ws, tmp_path):
    """Pulumi Cloud cannot be reached from tests: what is checked here is
    that a Cloud URL is accepted and keeps its access token, and where the
    source passphrase comes from."""
    from statekeeper import migrate
    from statekeeper.pulumi_cli import Pulumi

    settings = ws.settings(PULUMI_ACCESS_TOKEN="pul-" + TOKEN)
    cloud = migrate.parse_backend("https://api.pulumi.com", settings,
                                  "--from")
    assert cloud.kind == "cloud"
    env = Pulumi(settings, backend_url=cloud.url).env()
    assert env["PULUMI_ACCESS_TOKEN"] == "pul-" + TOKEN
    bucket = migrate.parse_backend("s3://old-state/team", settings, "--from")
    assert bucket.kind == "s3"
    assert bucket.url.startswith("s3://old-state/team?region=us-east-1&")
    assert migrate.s3_settings(settings, bucket).state_root == \
        "team/.pulumi/"

    passphrase_file = tmp_path / "p"
    passphrase_file.write_text("  from-file \n")
    assert migrate.source_environ(settings, str(passphrase_file)) == {
        "PULUMI_CONFIG_PASSPHRASE": "from-file"}
    from_env = ws.settings(SOURCE_PULUMI_CONFIG_PASSPHRASE="from-env")
    assert migrate.source_environ(from_env, None) == {
        "PULUMI_CONFIG_PASSPHRASE": "from-env"}
    assert migrate.source_environ(settings, None) == {}


def test_wrong_source_passphrase_is_explained(ws, s3, pulumi_cli, tmp_path):
    s3.create_bucket(Bucket="test-pulumi-state")
    project = copy_project(tmp_path)
    source = f"file://{tmp_path / 'file-state'}"
    (tmp_path / "file-state").mkdir()
    deploy(ws, project, source, passphrase="the-real-source-passphrase")
    env = dict(ws.env, SOURCE_PULUMI_CONFIG_PASSPHRASE="a-wrong-guess")

    done = ws.inv("migrate", "--stack", "staging", "--from", source,
                  "--project", str(project), env=env)

    line = assert_clean_failure(done, "incorrect passphrase",
                                "--from-passphrase-file")
    assert "a-wrong-guess" not in line
    assert ws.env["PULUMI_CONFIG_PASSPHRASE"] not in line
    assert keys(s3, "test-pulumi-state") == []
