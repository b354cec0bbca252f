"""``inv drift`` end to end with the real CLI.

What these tests can and cannot prove: with no provider plugin available,
the only resource whose real value can change behind a stack's back is a
stack reference.  ``drift-app`` reads the outputs of the ``upstream`` stack
(the ``yaml-app`` fixture); redeploying ``upstream`` with another greeting
is a genuine outside change that the refresh check must find.  The second
check (program/config against state) runs in every test and must stay
quiet, but no plugin-free resource here lets a config change show up as a
planned change (stack references are re-read, components are not diffed),
so that check's positive case is not proven here.
"""

from __future__ import annotations

import pytest
from conftest import assert_clean_failure
from deploy_support import (
    copy_project,
    init_stack,
    output_of,
    pulumi_in,
    read_checkpoint,
)

DRIFT_EXIT = 4


@pytest.fixture
def upstream(ws, s3, pulumi_cli, tmp_path):
    """The yaml-app fixture deployed as stack 'upstream'."""
    folder = copy_project(tmp_path, "yaml-app")
    init_stack(ws, s3, folder, "upstream", api_token="upstream-token")
    pulumi_in(ws, folder, "up", "--stack", "upstream", "--yes")
    return folder


@pytest.fixture
def deployed(ws, s3, upstream, tmp_path):
    folder = copy_project(tmp_path, "drift-app")
    init_stack(ws, s3, folder)
    done = ws.inv("deploy", "--stack", "staging", "--project", str(folder))
    assert done.returncode == 0, done.stdout + done.stderr
    return folder


def drift(ws, project):
    return ws.inv("drift", "--stack", "staging", "--project", str(project))


def test_no_drift_right_after_a_deploy(ws, deployed):
    done = drift(ws, deployed)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "drift staging: no drift" in done.stdout
    assert ws.env["PULUMI_CONFIG_PASSPHRASE"] not in output_of(done)


def test_an_outside_change_is_drift_and_drift_changes_nothing(
        ws, s3, upstream, deployed):
    pulumi_in(ws, upstream, "config", "set", "greeting", "bonjour",
              "--stack", "upstream")
    pulumi_in(ws, upstream, "up", "--stack", "upstream", "--yes")
    bucket = ws.env["STATE_BUCKET"]
    before = read_checkpoint(s3, bucket, project="drift-app")

    done = drift(ws, deployed)
    assert done.returncode == DRIFT_EXIT, done.stdout + done.stderr
    assert "upstream (pulumi:pulumi:StackReference)" in done.stdout
    assert "outside Pulumi" in done.stdout
    assert "drift staging: 1 drifted resource" in done.stdout
    assert "Traceback" not in done.stderr
    assert read_checkpoint(s3, bucket, project="drift-app") == before

    # A deploy with --refresh adopts the new value: no drift afterwards.
    redeploy = ws.inv("deploy", "--stack", "staging", "--project",
                      str(deployed), "--refresh")
    assert redeploy.returncode == 0, redeploy.stdout + redeploy.stderr
    assert drift(ws, deployed).returncode == 0


def test_drift_of_an_unknown_stack_is_an_error_not_drift(ws, deployed):
    done = ws.inv("drift", "--stack", "prod", "--project", str(deployed))
    assert_clean_failure(done, "stack 'prod' does not exist")
    assert done.returncode not in (0, DRIFT_EXIT)
