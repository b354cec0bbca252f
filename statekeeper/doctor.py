"""``inv doctor``: the preflight a person or a pipeline runs before a deploy.

Each check ends ``ok`` or ``failed`` with the fix.  Checks that depend on an
earlier one (the bucket on the credentials, the stacks on the CLI) are not
run when that one failed, so the first failure is the one to fix.
``preflight`` runs the checks a deploy of one stack needs and raises the
first failure as an error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from statekeeper import aws, bucket, stacks
from statekeeper.errors import StatekeeperError
from statekeeper.pulumi_cli import Pulumi

if TYPE_CHECKING:
    from statekeeper.config import Settings


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""
    fix: str = ""


class Failed(StatekeeperError):
    """A check failed; ``problem`` and ``fix`` say why and what to do."""


class Doctor:
    """Runs the checks in order, remembering what already failed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pulumi = Pulumi(settings, cwd=settings.project_dir)
        self._s3: Any = None

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = aws.client(self.settings, "s3", attempts=2)
        return self._s3

    def backend_url(self) -> str:
        env = self.settings.environ
        if not (env.get("PULUMI_BACKEND_URL", "").strip()
                or env.get("STATE_BUCKET", "").strip()
                or self.settings.sandbox):
            raise Failed(
                "no backend URL: neither PULUMI_BACKEND_URL nor "
                "STATE_BUCKET is set",
                "set one of them in .env or in the CI variables",
            )
        return self.settings.backend_url.split("?", 1)[0]

    def credentials(self) -> str:
        sts = aws.client(self.settings, "sts", attempts=2)
        with aws.translated(self.settings, "checking credentials (STS)"):
            who = sts.get_caller_identity()
        return f"account {who.get('Account')} as {who.get('Arn')}"

    def bucket(self) -> str:
        s3 = self.s3
        with aws.translated(self.settings,
                            f"reading bucket {self.settings.bucket}"):
            s3.head_bucket(Bucket=self.settings.bucket)
            problems, notes = [], []
            for setting in bucket.settings_for(s3, self.settings):
                if setting.skip_reason:
                    notes.append(f"{setting.name} skipped")
                    continue
                try:
                    if not setting.complies(setting.current()):
                        problems.append(setting.name)
                except bucket.Unsupported:
                    notes.append(f"{setting.name} unsupported by the store")
        if problems:
            raise Failed(
                f"bucket {self.settings.bucket} is not compliant: "
                + ", ".join(problems),
                "run 'inv bootstrap' to repair it",
            )
        return f"s3://{self.settings.bucket} compliant" + (
            f" ({'; '.join(notes)})" if notes else "")

    def cli(self) -> str:
        return f"pulumi v{self.pulumi.check_version()}"

    def secrets(self) -> str:
        self.pulumi.require_secrets_provider()
        provider = self.settings.secrets_provider
        if provider != "passphrase":
            return provider.split("?", 1)[0]
        source = ("PULUMI_CONFIG_PASSPHRASE"
                  if "PULUMI_CONFIG_PASSPHRASE" in self.settings.environ
                  else "PULUMI_CONFIG_PASSPHRASE_FILE")
        return f"passphrase from {source}"

    def stack(self, name: str) -> Callable[[], str]:
        def check() -> str:
            names = stacks.existing(self.pulumi)
            if name not in names:
                raise Failed(*stacks.missing_stack_message(name, names))
            return f"exists in project {self.settings.project_dir.name}"

        return check

    def locks(self) -> str:
        from statekeeper import locks

        with aws.translated(self.settings, "listing lock objects"):
            stale = locks.stale_locks(self.settings)
        if stale:
            first = stale[0]
            raise Failed(
                f"{len(stale)} stale lock(s), first on stack {first.stack} "
                f"by {first.username}@{first.hostname} (process "
                f"{first.process})",
                f"run '{first.fix}'",
            )
        return "no stale locks"

    def pending_operations(self) -> str:
        from statekeeper import locks

        with aws.translated(self.settings, "reading checkpoints"):
            pending = locks.stacks_with_pending_operations(self.settings)
        if pending:
            first = pending[0]
            raise Failed(
                f"stack {first.project}/{first.stack} has "
                f"{len(first.operations)} interrupted operation(s): "
                + "; ".join(first.operations[:3]),
                first.fix,
            )
        return "no interrupted updates"

    def plan(self) -> list[tuple[str, Callable[[], str], tuple[str, ...]]]:
        """(name, check, names it depends on), in order."""
        checks: list[tuple[str, Callable[[], str], tuple[str, ...]]] = [
            ("backend URL", self.backend_url, ()),
            ("credentials", self.credentials, ("backend URL",)),
            ("bucket", self.bucket, ("credentials",)),
            ("pulumi CLI", self.cli, ()),
            ("secrets provider", self.secrets, ()),
            ("locks", self.locks, ("bucket",)),
            ("pending operations", self.pending_operations, ("bucket",)),
        ]
        for name in self.settings.stacks:
            checks.append((f"stack {name}", self.stack(name),
                           ("bucket", "pulumi CLI")))
        return checks


def checks(settings: Settings) -> list[Check]:
    doctor = Doctor(settings)
    results: list[Check] = []
    failed: set[str] = set()
    for name, check, needs in doctor.plan():
        blocked = [n for n in needs if n in failed]
        if blocked:
            failed.add(name)
            results.append(Check(name, False, f"not checked: {blocked[0]} "
                                 "failed", f"fix {blocked[0]} first"))
            continue
        try:
            results.append(Check(name, True, check()))
        except StatekeeperError as exc:
            failed.add(name)
            results.append(Check(name, False, exc.problem, exc.fix or ""))
    return results


def run(settings: Settings, *, as_json: bool = False) -> int:
    results = checks(settings)
    bad = [c for c in results if not c.ok]
    if as_json:
        print(json.dumps({"ok": not bad,
                          "checks": [asdict(c) for c in results]},
                         indent=2))
    else:
        for check in results:
            mark = "ok" if check.ok else "FAILED"
            print(f"{mark:>7}  {check.name}: {check.detail}")
            if check.fix:
                print(f"{'':>9}fix: {check.fix}")
    if bad:
        print(f"error: {len(bad)} of {len(results)} checks failed "
              f"(first: {bad[0].name})", file=sys.stderr)
        return 1
    return 0


def preflight(settings: Settings, stack: str) -> None:
    """Raise the first failing check a deploy of ``stack`` depends on."""
    doctor = Doctor(settings)
    doctor.backend_url()
    doctor.cli()
    doctor.secrets()
    with aws.translated(settings, f"reading bucket {settings.bucket}"):
        doctor.s3.head_bucket(Bucket=settings.bucket)
    doctor.stack(stack)()
