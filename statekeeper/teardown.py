"""Destroy a stack's resources, or remove the stack itself.

Both are irreversible, so both need the stack named explicitly with
``--stack`` (never a default), refuse without ``--yes``, and first list
what will be lost.  ``remove_stack`` also refuses while the state still
holds resources, unless forced: removing it would leave them running with
nothing managing them.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TextIO

from statekeeper import checkpoint
from statekeeper.deploy import (
    cli_for,
    is_infrastructure,
    preflight,
    resource_label,
    run_update,
)
from statekeeper.errors import ConfigError, Refused
from statekeeper.output import Report
from statekeeper.project import name as project_name

if TYPE_CHECKING:
    from statekeeper.config import Settings


def require_named(stack: str | None, task: str) -> str:
    """Irreversible tasks take no default stack."""
    if not stack:
        raise ConfigError(f"{task} needs the stack named explicitly",
                          f"run 'inv {task} --stack NAME --yes'")
    return stack


def state_resources(settings: Settings, stack: str) -> list[dict[str, Any]]:
    """The resources recorded in the stack's current state."""
    done = cli_for(settings).run("stack", "export", "--stack", stack)
    state = checkpoint.parse(done.stdout.encode(), f"export of {stack}")
    return state.resources


def destroy(
    settings: Settings, stack: str | None, *, yes: bool = False,
    out: TextIO | None = None, err: TextIO | None = None,
) -> int:
    """``pulumi destroy`` after listing what goes; returns its exit code."""
    out, err = out or sys.stdout, err or sys.stderr
    stack = require_named(stack, "destroy")
    settings = settings.with_stacks((stack,))
    preflight(settings, stack)
    managed = [r for r in state_resources(settings, stack)
               if is_infrastructure(r)]
    report = Report(out, err)
    for resource in managed:
        report.step("delete", resource_label(str(resource.get("urn", ""))))
    if not yes:
        raise Refused(
            f"not destroying stack '{stack}' ({_count(managed)}) without "
            "--yes",
            f"check the list above, then run 'inv destroy --stack {stack} "
            "--yes'",
        )
    return run_update(settings, "destroy", "destroy", stack, [], out, err)


def remove_stack(
    settings: Settings, stack: str | None, *, yes: bool = False,
    force: bool = False, out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``pulumi stack rm``: checkpoint, history and stack config go."""
    out, err = out or sys.stdout, err or sys.stderr
    stack = require_named(stack, "stack.rm")
    settings = settings.with_stacks((stack,))
    preflight(settings, stack)
    project = project_name(settings.project_dir)
    resources = state_resources(settings, stack)
    managed = [r for r in resources if is_infrastructure(r)]
    history = _history_count(settings, project, stack)
    key = checkpoint.stack_key(settings.state_root, project, stack)
    config_file = settings.project_dir / f"Pulumi.{stack}.yaml"
    print(f"removing stack '{stack}' deletes s3://{settings.bucket}/{key}, "
          f"{history} history entr{'y' if history == 1 else 'ies'}"
          + (f" and {config_file.name} (its config and secrets)"
             if config_file.exists() else "")
          + "; backups under .pulumi/backups stay", file=out)
    report = Report(out, err)
    for resource in managed:
        report.step("orphaned" if force else "in state",
                    resource_label(str(resource.get("urn", ""))))
    if resources and not force:
        raise Refused(
            f"stack '{stack}' still has {_count(managed or resources)}",
            f"run 'inv destroy --stack {stack} --yes' first, or add --force "
            "to forget them (they keep running, unmanaged)",
        )
    if not yes:
        raise Refused(f"not removing stack '{stack}' without --yes",
                      f"run 'inv stack.rm --stack {stack} --yes'")
    args = ["stack", "rm", "--stack", stack, "--yes"]
    if force:
        args.append("--force")
    cli_for(settings).run(*args)
    print(f"stack.rm {stack}: removed, {len(managed)} resources forgotten, "
          f"{history} history entries deleted", file=out)
    return 0


def _count(resources: list[dict[str, Any]]) -> str:
    return f"{len(resources)} resource{'' if len(resources) == 1 else 's'}"


def _history_count(settings: Settings, project: str, stack: str) -> int:
    from statekeeper import aws

    prefix = checkpoint.history_prefix(settings.state_root, project, stack)
    s3 = aws.client(settings, "s3")
    count = 0
    with aws.translated(settings, f"listing the history of '{stack}'"):
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=settings.bucket, Prefix=prefix)
        for page in pages:
            count += sum(1 for item in page.get("Contents") or []
                         if item["Key"].endswith(".history.json"))
    return count
