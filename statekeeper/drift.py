"""Tell whether a stack has drifted, in a way cron and CI can act on.

Two checks, both read-only (no update is written, no lock taken):

1. ``pulumi refresh --preview-only --expect-no-changes``: resources changed
   outside Pulumi (the cloud no longer matches the state);
2. ``pulumi preview --expect-no-changes``: the program or its config no
   longer matches the state (a change was made but not deployed).

Exit 0 means neither found anything; :data:`DRIFT_EXIT` means drift, with
one line per drifted resource on stdout; any other failure is an error.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from statekeeper.deploy import (
    Change,
    cli_for,
    pick_stack,
    planned_changes,
    preflight,
    run_with_events,
)
from statekeeper.output import Report

if TYPE_CHECKING:
    from statekeeper.config import Settings

# Distinct from 1 (error), 2 (bad settings) and 3 (refused).
DRIFT_EXIT = 4

_CHECKS = (
    ("outside Pulumi", ("refresh", "--preview-only", "--expect-no-changes")),
    ("program/config", ("preview", "--expect-no-changes")),
)


@dataclass(frozen=True)
class Drift:
    check: str
    change: Change


def find(settings: Settings, stack: str) -> list[Drift]:
    """Every drifted resource of ``stack`` (an empty list: no drift)."""
    pulumi = cli_for(settings)
    found: list[Drift] = []
    for check, command in _CHECKS:
        done, events = run_with_events(pulumi, *command, "--stack", stack)
        changes = planned_changes(events)
        # --expect-no-changes fails the command when it finds changes;
        # any other failure means the check itself did not run.
        if not done.ok and not (changes and "no changes were expected"
                                in done.stderr):
            raise pulumi.failure(done)
        found.extend(Drift(check, change) for change in changes)
    return found


def check(
    settings: Settings, *, out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Report drift of the stack; returns 0 or :data:`DRIFT_EXIT`."""
    out, err = out or sys.stdout, err or sys.stderr
    stack = pick_stack(settings)
    preflight(settings, stack)
    drifted = find(settings, stack)
    report = Report(out, err)
    for item in drifted:
        keys = ", ".join(item.change.keys)
        detail = item.check + (f": {keys}" if keys else "")
        report.step(item.change.op, item.change.resource, detail)
    if not drifted:
        print(f"drift {stack}: no drift", file=out)
        return 0
    print(f"drift {stack}: {len(drifted)} drifted resource"
          f"{'' if len(drifted) == 1 else 's'}", file=out)
    return DRIFT_EXIT
