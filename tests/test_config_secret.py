"""``inv config.secret``: the value comes from standard input, is stored
encrypted, and never appears on the command line or in the output.
"""

from __future__ import annotations

import pytest
from conftest import assert_clean_failure
from deploy_support import copy_project, init_stack, output_of, pulumi_in

VALUE = "s3cr3t-" + "a9d2f4"


@pytest.fixture
def project(ws, s3, pulumi_cli, tmp_path):
    folder = copy_project(tmp_path)
    init_stack(ws, s3, folder)
    return folder


def test_secret_from_stdin_is_stored_encrypted(ws, project):
    done = ws.inv("config.secret", "--stack", "staging", "--project",
                  str(project), "apiToken", input=VALUE + "\n")
    assert done.returncode == 0, done.stderr
    assert "apiToken set, encrypted" in done.stdout
    stack_file = (project / "Pulumi.staging.yaml").read_text()
    assert "secure:" in stack_file and VALUE not in stack_file
    got = pulumi_in(ws, project, "config", "get", "apiToken", "--stack",
                    "staging").stdout.strip()
    assert got == VALUE
    assert VALUE not in output_of(done)
    assert ws.env["PULUMI_CONFIG_PASSPHRASE"] not in output_of(done)


def test_value_on_the_command_line_is_refused_without_echo(ws, project):
    done = ws.inv("config.secret", "--stack", "staging", "--project",
                  str(project), f"apiToken={VALUE}")
    assert_clean_failure(done, "KEY=VALUE", "standard input")
    assert VALUE not in output_of(done)
    assert "apiToken" not in (project / "Pulumi.staging.yaml").read_text()


def test_empty_input_sets_nothing(ws, project):
    done = ws.inv("config.secret", "--stack", "staging", "--project",
                  str(project), "apiToken", input="")
    assert_clean_failure(done, "no value given for apiToken")
    assert "apiToken" not in (project / "Pulumi.staging.yaml").read_text()


def test_unknown_stack_names_the_closest(ws, project):
    done = ws.inv("config.secret", "--stack", "staing", "--project",
                  str(project), "apiToken", input=VALUE)
    assert_clean_failure(done, "stack 'staing' does not exist",
                         "'staging'")
    assert not (project / "Pulumi.staing.yaml").exists()
