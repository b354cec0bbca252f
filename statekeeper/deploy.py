"""Deploy a stack: preflight, then ``pulumi up`` (or a preview), then one
summary line with counts.

The preflight runs before Pulumi does, so a mistyped stack name fails with
the closest existing names and is never created, and a missing passphrase
fails with a clear message instead of a prompt that would hang in cron or
CI.  ``pulumi up`` streams its own display to the terminal and keeps its
exit code; the counts in the summary come from the update Pulumi wrote into
the stack's history.  A preview reads the engine's events and prints one
line per resource that would change.

The module also holds what :mod:`statekeeper.teardown` and
:mod:`statekeeper.drift` share with it: picking the stack, the preflight,
the project's name and the wording of change counts.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from statekeeper.errors import ConfigError, PulumiError
from statekeeper.output import Report
from statekeeper.project import project_file
from statekeeper.pulumi_cli import Pulumi, Result

if TYPE_CHECKING:
    from statekeeper.config import Settings

# Pulumi's operation names, the past tense a deploy summary uses and the
# future tense a preview uses.  The first four always appear in a summary.
_CHANGES = (
    ("create", "created", "to create"),
    ("update", "updated", "to update"),
    ("delete", "deleted", "to delete"),
    ("same", "unchanged", "unchanged"),
    ("replace", "replaced", "to replace"),
)
_ALWAYS_SHOWN = 4

# Resource types that are bookkeeping rather than infrastructure.
_BOOKKEEPING_TYPES = ("pulumi:pulumi:Stack",)
_PROVIDER_TYPE_PREFIX = "pulumi:providers:"


def pick_stack(settings: Settings) -> str:
    """The one stack a task works on: ``--stack`` or PULUMI_STACKS."""
    if len(settings.stacks) != 1:
        raise ConfigError(
            "several stacks are configured (" + ", ".join(settings.stacks)
            + ") and no --stack was given",
            "pass --stack NAME",
        )
    return settings.stacks[0]


def cli_for(settings: Settings) -> Pulumi:
    """A Pulumi runner working in the settings' project directory."""
    # The debug switch only makes `--event-log` available on every
    # operation (refresh hides it otherwise); it changes no output.
    return Pulumi(settings, cwd=settings.project_dir,
                  environ={"PULUMI_DEBUG_COMMANDS": "true"})


def preflight(settings: Settings, stack: str) -> None:
    """Fail before Pulumi runs: project, backend, CLI, secrets, stack.

    The project check is ours (``doctor`` works without a project); the
    rest is ``doctor.preflight``, which stops at the first failing check
    and names the closest existing stacks for a mistyped one.
    """
    from statekeeper import doctor

    project_file(settings.project_dir)
    doctor.preflight(settings, stack)


def deploy(
    settings: Settings, *, refresh: bool = False, preview_only: bool = False,
    out: TextIO | None = None, err: TextIO | None = None,
) -> int:
    """``pulumi up`` on the stack; returns the CLI's exit code."""
    stack = pick_stack(settings)
    if preview_only:
        return preview(settings, refresh=refresh, out=out, err=err)
    out, err = out or sys.stdout, err or sys.stderr
    preflight(settings, stack)
    args = ["--refresh"] if refresh else []
    return run_update(settings, "deploy", "up", stack, args, out, err)


def run_update(settings: Settings, task: str, command: str, stack: str,
               args: list[str], out: TextIO, err: TextIO) -> int:
    """Run ``pulumi COMMAND`` (up, destroy) with its own display, then one
    summary line from the update it recorded; returns the CLI's exit
    code."""
    pulumi = cli_for(settings)
    started = time.time()
    out.flush()
    done = pulumi.run(command, "--stack", stack, "--yes", *args,
                      secrets=True, capture=False, check=False)
    forward_stderr(done, err)
    update = latest_update(pulumi, stack, since=started)
    counts = update.get("resourceChanges") if update else None
    if done.ok:
        print(f"{task} {stack}: {describe_changes(counts)}", file=out)
    else:
        tail = f"; {describe_changes(counts)}" if counts else ""
        print(f"error: {task} of stack '{stack}' failed (pulumi exit "
              f"{done.returncode}){tail}; see Pulumi's messages above",
              file=err)
    return done.returncode


def preview(
    settings: Settings, *, refresh: bool = False,
    out: TextIO | None = None, err: TextIO | None = None,
) -> int:
    """``pulumi preview``: one line per change, a summary, the exit code."""
    out, err = out or sys.stdout, err or sys.stderr
    stack = pick_stack(settings)
    preflight(settings, stack)
    args = ["preview", "--stack", stack]
    if refresh:
        args.append("--refresh")
    done, events = run_with_events(cli_for(settings), *args)
    report = Report(out, err)
    for change in planned_changes(events):
        report.step(change.op, change.resource)
    counts = summary_counts(events)
    if counts is None and not done.ok:
        raise cli_for(settings).failure(done)
    print(f"preview {stack}: {describe_changes(counts, planned=True)}",
          file=out)
    if not done.ok:
        forward_stderr(done, err)
    return done.returncode


@dataclass(frozen=True)
class Change:
    """One resource an operation would change (or has changed)."""

    op: str
    urn: str
    keys: tuple[str, ...] = ()

    @property
    def resource(self) -> str:
        return resource_label(self.urn)


# Operations that leave a resource as it is.
_NO_CHANGE_OPS = frozenset({"same", "read", "refresh", "read-discard"})


def run_with_events(
    pulumi: Pulumi, *args: str,
) -> tuple[Result, list[dict[str, Any]]]:
    """Run a Pulumi operation, returning its engine events.

    The engine events (``--event-log``, the stream the Automation API
    reads) name every resource with its operation, which the CLI's
    ``--json`` summary does not do for a refresh.  The human display is
    captured, not shown.
    """
    import json
    import tempfile

    with tempfile.TemporaryDirectory(prefix="statekeeper-") as folder:
        log = Path(folder) / "events.jsonl"
        done = pulumi.run(*args, "--event-log", str(log), secrets=True,
                          check=False)
        events = []
        if log.is_file():
            for line in log.read_text(encoding="utf-8").splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    events.append(event)
    return done, events


def planned_changes(events: list[dict[str, Any]]) -> list[Change]:
    """Resources whose operation changes something, in event order."""
    ops: dict[str, Change] = {}
    for event in events:
        for kind in ("resourcePreEvent", "resOutputsEvent"):
            metadata = (event.get(kind) or {}).get("metadata")
            if not isinstance(metadata, dict) or not metadata.get("urn"):
                continue
            urn = str(metadata["urn"])
            if f"::{_PROVIDER_TYPE_PREFIX}" in urn:
                continue  # Pulumi's summary does not count providers
            keys = tuple(str(k) for k in metadata.get("diffs") or ())
            # The outputs event carries the final verdict: a refresh
            # announced as 'refresh' ends as 'update' when it differs.
            ops[urn] = Change(str(metadata.get("op", "")), urn, keys)
    return [change for change in ops.values()
            if change.op and change.op not in _NO_CHANGE_OPS]


def summary_counts(events: list[dict[str, Any]]) -> dict[str, int] | None:
    """The operation counts the engine reported at the end, if it did."""
    for event in reversed(events):
        summary = event.get("summaryEvent")
        if isinstance(summary, dict):
            return dict(summary.get("resourceChanges") or {})
    return None


def forward_stderr(done: Result, err: TextIO) -> None:
    """Pass on what the CLI wrote to stderr (already redacted)."""
    text = done.stderr.strip()
    if text:
        print(text, file=err)


def latest_update(
    pulumi: Pulumi, stack: str, *, since: float | None = None,
) -> dict[str, Any] | None:
    """The newest entry of the stack's history (``since``: not older)."""
    done = pulumi.run("stack", "history", "--stack", stack, "--json",
                      "--page-size", "1", check=False)
    if not done.ok:
        return None
    try:
        entries = done.json()
    except PulumiError:
        return None
    if not isinstance(entries, list) or not entries:
        return None
    entry = entries[0]
    if since is not None:
        started = parse_time(str(entry.get("startTime", "")))
        # History times have whole seconds; allow that much rounding.
        if started is not None and started < since - 1:
            return None
    return entry


def parse_time(text: str) -> float | None:
    """Seconds since the epoch of a time the Pulumi CLI printed."""
    text = text.strip()
    for pattern in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d %H:%M:%S %z",
                    "%Y-%m-%d %H:%M:%S%z"):
        try:
            return datetime.strptime(text.replace("Z", "+0000"),
                                     pattern).timestamp()
        except ValueError:
            continue
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def describe_changes(counts: Mapping[str, int] | None, *,
                     planned: bool = False) -> str:
    """'2 created, 0 updated, 0 deleted, 1 unchanged' (or 'to create')."""
    counts = dict(counts or {})
    parts = []
    for index, (op, done, todo) in enumerate(_CHANGES):
        number = int(counts.pop(op, 0) or 0)
        if index < _ALWAYS_SHOWN or number:
            parts.append(f"{number} {todo if planned else done}")
    for op, number in sorted(counts.items()):
        if number:
            parts.append(f"{number} {op}")
    return ", ".join(parts)


def resource_label(urn: str) -> str:
    """'greetingNote (pulumi:index:Stash)' from a URN."""
    parts = urn.split("::")
    if len(parts) < 4:
        return urn
    kind = parts[2].rsplit("$", 1)[-1]
    return f"{parts[-1]} ({kind})"


def is_infrastructure(resource: Mapping[str, Any]) -> bool:
    """Whether a state resource is more than Pulumi's own bookkeeping."""
    kind = str(resource.get("type", ""))
    return (kind not in _BOOKKEEPING_TYPES
            and not kind.startswith(_PROVIDER_TYPE_PREFIX))
