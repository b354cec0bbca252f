"""Setup shared by the deploy, drift, destroy and config.secret tests.

A copy of a fixture project (stack init writes ``Pulumi.<stack>.yaml``
next to it, so each test gets its own), a versioned state bucket on the
moto server and a stack created with the real CLI.  ``notes-app`` has two
component resources (a local YAML component package), outputs and a
secret config value; ``drift-app`` reads another stack's outputs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent / "fixtures"

PROJECT = "notes-app"
SECRET_TOKEN = "tok-" + "5f1c9a7e0b3d"


def copy_project(tmp_path: Path, fixture: str = PROJECT) -> Path:
    target = tmp_path / fixture
    shutil.copytree(FIXTURES / fixture, target)
    return target


def make_bucket(s3, bucket: str) -> None:
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(
        Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})


def pulumi_in(ws: Any, project: Path, *args: str,
              input: str | None = None, check: bool = True):
    """The real CLI on the workspace's backend, from the project folder."""
    from statekeeper.pulumi_cli import Pulumi

    settings = ws.settings(PULUMI_PROJECT_DIR=str(project))
    return Pulumi(settings, cwd=project).run(*args, input=input,
                                             check=check)


def init_stack(ws: Any, s3, project: Path, stack: str = "staging",
               api_token: str | None = None) -> None:
    """A fresh bucket (if needed) and a passphrase stack.

    With ``api_token`` the stack's secret ``apiToken`` is set: Pulumi
    refuses to deploy a secret config key that holds a plaintext default.
    """
    bucket = ws.env["STATE_BUCKET"]
    if bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        make_bucket(s3, bucket)
    pulumi_in(ws, project, "stack", "init", stack,
              "--secrets-provider", "passphrase")
    if api_token is not None:
        pulumi_in(ws, project, "config", "set", "--secret", "apiToken",
                  "--stack", stack, input=api_token)


def checkpoint_key(stack: str = "staging", project: str = PROJECT) -> str:
    return f".pulumi/stacks/{project}/{stack}.json"


def read_checkpoint(s3, bucket: str, stack: str = "staging",
                    project: str = PROJECT) -> dict:
    key = checkpoint_key(stack, project)
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def keys_under(s3, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages
            for item in page.get("Contents") or []]


def output_of(*runs: subprocess.CompletedProcess) -> str:
    return "\n".join(run.stdout + run.stderr for run in runs)
