"""Tasks for keeping Pulumi state in your own S3 bucket.

This file stays thin: arguments, help text and exit codes.  The work lives
in the ``statekeeper`` package, imported inside each task so that
``inv --list`` never loads boto3 or pulumi.  Expected failures print one
line on stderr and exit non-zero; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from invoke import Collection, Exit, task

WORKSPACE = Path(__file__).resolve().parent
if str(WORKSPACE) not in sys.path:
    sys.path.insert(0, str(WORKSPACE))

_REGISTERED: list[tuple[str | None, object, bool]] = []


def cli(namespace=None, *, name=None, default=False, help=None,
        positional=None, optional=None, iterable=None):
    """Register a task; a StatekeeperError becomes one line and an exit."""

    def wrap(body):
        @functools.wraps(body)
        def guarded(c, *args, **kwargs):
            from statekeeper.errors import StatekeeperError

            try:
                return body(c, *args, **kwargs)
            except StatekeeperError as exc:
                raise Exit(f"error: {exc}", code=exc.exit_code) from None
            except KeyboardInterrupt:
                raise Exit("interrupted", code=130) from None

        made = task(name=name, help=help or {}, positional=positional,
                    optional=optional or (), iterable=iterable or ())(guarded)
        _REGISTERED.append((namespace, made, default))
        return made

    return wrap


def settings(stack=None, project=None, **variables):
    """Validated settings: task flags over environment over .env."""
    from statekeeper import config

    overrides = {key: value for key, value in variables.items()
                 if value is not None}
    if project:
        overrides["PULUMI_PROJECT_DIR"] = str(Path(project).resolve())
    loaded = config.load(overrides, workspace=WORKSPACE)
    if stack:
        loaded = loaded.with_stacks((stack,))
    return loaded


def number(value, flag, default, *, cast=int, minimum=0):
    """A numeric flag's value, or ``default`` when it is not given.

    Numeric flags default to None so that invoke hands over their text:
    invoke itself answers text that is not a number with a traceback.
    """
    from statekeeper.errors import ConfigError

    if value is None:
        return default
    try:
        parsed = cast(value)
    except ValueError:
        parsed = None
    if parsed is None or not parsed >= minimum:  # NaN fails this too
        kind = "whole number" if cast is int else "number"
        raise ConfigError(f"{flag} '{value}' is not a {kind} of at least "
                          f"{minimum}", f"pass one, or leave {flag} out "
                          "for the default")
    return parsed


def check_code(code):
    """Exit with ``code`` (already explained on the output) unless 0."""
    if code:
        raise Exit(code=code)


STACK_HELP = "stack name (default: the configured PULUMI_STACKS)"
PROJECT_HELP = "Pulumi project directory (default: stacks/)"


# --- local AWS emulator -------------------------------------------------


@cli("sandbox", name="up", help={"port": "port on 127.0.0.1 (default 5000 "
                                         "or a free one)"})
def sandbox_up(c, port=None):
    """Start the local AWS emulator (moto) and point every task at it."""
    from statekeeper import sandbox

    endpoint, started = sandbox.up(WORKSPACE, number(port, "--port", 0))
    state = "started" if started else "already running"
    print(f"sandbox {state} at {endpoint}; every task now uses it "
          "(inv sandbox.down stops it)")


@cli("sandbox", name="down")
def sandbox_down(c):
    """Stop the local AWS emulator and forget everything stored in it."""
    from statekeeper import sandbox

    stopped = sandbox.down(WORKSPACE)
    print("sandbox stopped" if stopped else "sandbox was not running")


@cli("sandbox", name="status")
def sandbox_status(c):
    """Say whether the local AWS emulator runs, and where."""
    from statekeeper import sandbox

    endpoint = sandbox.running_endpoint(WORKSPACE)
    print(f"sandbox running at {endpoint}" if endpoint
          else "sandbox not running (inv sandbox.up starts it)")
    check_code(0 if endpoint else 1)


# --- bootstrap and preflight --------------------------------------------


@cli(help={
    "dry_run": "report what would change and change nothing",
    "stacks": "comma-separated stacks to create (default PULUMI_STACKS)",
    "bucket": "state bucket name (default STATE_BUCKET)",
    "region": "AWS region (default AWS_REGION)",
    "project": PROJECT_HELP,
})
def bootstrap(c, dry_run=False, stacks=None, bucket=None, region=None,
              project=None):
    """Create or repair the state bucket, log in and create the stacks."""
    from statekeeper import bootstrap as work

    loaded = settings(project=project, STATE_BUCKET=bucket,
                      AWS_REGION=region, PULUMI_STACKS=stacks)
    check_code(work.run(loaded, dry_run=dry_run))


@cli(help={"stack": STACK_HELP, "project": PROJECT_HELP,
           "json": "print the checks as JSON for machines"})
def doctor(c, stack=None, project=None, json=False):
    """Check backend, credentials, bucket, CLI, secrets and stacks."""
    from statekeeper import doctor as work

    check_code(work.run(settings(stack, project), as_json=json))


# --- deploy lifecycle (deploy.py) ---------------------------------------


@cli(name="deploy", help={
    "stack": STACK_HELP, "project": PROJECT_HELP,
    "preview": "only show the plan (same as inv preview); change nothing",
    "refresh": "refresh the state from the cloud before updating",
})
def deploy_stack(c, stack=None, project=None, preview=False, refresh=False):
    """Deploy a stack with pulumi up, after preflight checks."""
    from statekeeper import deploy as work

    check_code(work.deploy(settings(stack, project), refresh=refresh,
                           preview_only=preview))


@cli(name="preview", help={
    "stack": STACK_HELP, "project": PROJECT_HELP,
    "refresh": "refresh the state from the cloud before planning",
})
def preview_stack(c, stack=None, project=None, refresh=False):
    """Show what a deploy would change, changing nothing."""
    from statekeeper import deploy as work

    check_code(work.preview(settings(stack, project), refresh=refresh))


@cli(name="destroy", help={
    "stack": "stack whose resources to delete (required)",
    "project": PROJECT_HELP,
    "yes": "really delete; without it the resources are only listed",
})
def destroy_stack(c, stack=None, project=None, yes=False):
    """Delete every resource of a stack (lists them; needs --yes)."""
    from statekeeper import teardown

    check_code(teardown.destroy(settings(project=project), stack, yes=yes))


@cli(name="drift", help={
    "stack": STACK_HELP, "project": PROJECT_HELP,
})
def drift_check(c, stack=None, project=None):
    """Check a stack for drift: exit 0 none, 4 drift (listed), 1 error."""
    from statekeeper import drift

    check_code(drift.check(settings(stack, project)))


@cli("stack", name="rm", help={
    "stack": "stack to remove (required)", "project": PROJECT_HELP,
    "yes": "really remove; without it only what would be lost is listed",
    "force": "remove even though the state still holds resources (they "
             "keep running, unmanaged)",
})
def stack_rm(c, stack=None, project=None, yes=False, force=False):
    """Remove a stack: checkpoint, history and config (needs --yes)."""
    from statekeeper import teardown

    check_code(teardown.remove_stack(settings(project=project), stack,
                                     yes=yes, force=force))


@cli("config", name="secret", positional=["key"], help={
    "key": "config key, e.g. apiToken; the value is read from standard "
           "input or a prompt, never from the command line",
    "stack": STACK_HELP, "project": PROJECT_HELP,
})
def config_secret(c, key, stack=None, project=None):
    """Set an encrypted config value, read from stdin or a prompt."""
    from statekeeper import secret_config

    check_code(secret_config.set_secret(settings(stack, project), key))


# --- least-privilege identity (iam.py) ----------------------------------


@cli("iam", name="policy", help={
    "bucket": "state bucket name (default STATE_BUCKET)",
    "prefix": "folder of the state in the bucket (default STATE_PREFIX)",
})
def iam_policy(c, bucket=None, prefix=None):
    """Print the minimal IAM policy for running Pulumi on this backend."""
    from statekeeper import iam

    print(iam.policy_json(settings(STATE_BUCKET=bucket,
                                   STATE_PREFIX=prefix)))


@cli("iam", name="apply", help={
    "github_repo": "owner/name of the repository whose GitHub Actions may "
                   "assume the deploy role (creates the OIDC provider and "
                   "the role)",
    "branch": "the only branch allowed to assume the role (default main)",
    "environment": "allow jobs of this GitHub environment instead of a "
                   "branch",
    "pull_requests": "also allow pull request runs (previews) to assume "
                     "the role",
    "role_name": "name of the deploy role (default statekeeper-deploy)",
    "bucket": "state bucket name (default STATE_BUCKET)",
    "dry_run": "report what would change and change nothing",
})
def iam_apply(c, github_repo=None, branch="main", environment=None,
              pull_requests=False, role_name=None, bucket=None,
              dry_run=False):
    """Create or repair the state policy and the GitHub deploy role."""
    from statekeeper import iam

    trust = None
    if github_repo:
        trust = iam.GithubTrust(github_repo, branch, environment,
                                pull_requests)
    elif environment or pull_requests or role_name:
        from statekeeper.errors import ConfigError

        raise ConfigError(
            "--environment, --pull-requests and --role-name need "
            "--github-repo", "pass --github-repo owner/name")
    check_code(iam.run(settings(STATE_BUCKET=bucket), trust=trust,
                       role_name=role_name or iam.DEFAULT_ROLE,
                       dry_run=dry_run))


# --- backup, restore, history, rollback, prune --------------------------

DEST_HELP = "s3://BUCKET/PREFIX or a directory (default BACKUP_DEST)"


@cli("backup", name="run", default=True, help={
    "to": DEST_HELP,
    "dry_run": "show what would be copied and pruned; change nothing",
    "exports": "also keep 'pulumi stack export' of each stack (secrets "
               "stay encrypted)",
    "threads": "parallel copies (default 32)",
    "wait": "seconds to wait for a running backup (default 0: exit 75)",
})
def backup_run(c, to=None, dry_run=False, exports=False, threads=None,
               wait=None):
    """Snapshot the whole state backend, then apply retention."""
    from statekeeper import backup

    check_code(backup.run(settings(), to=to, dry_run=dry_run,
                          exports=exports,
                          threads=number(threads, "--threads", 32,
                                         minimum=1),
                          wait=number(wait, "--wait", 0, cast=float)))


@cli("backup", name="list", help={"source": DEST_HELP,
                                  "json": "print the snapshots as JSON"})
def backup_list(c, source=None, json=False):
    """List the snapshots at the backup destination."""
    from statekeeper import backup

    check_code(backup.list_snapshots(settings(), source=source,
                                     as_json=json))


@cli("backup", name="verify", positional=["snapshot"], help={
    "snapshot": "snapshot id, or 'latest' for the newest complete one",
    "source": DEST_HELP,
})
def backup_verify(c, snapshot, source=None):
    """Re-read a snapshot's objects and check them against its manifest."""
    from statekeeper import backup

    check_code(backup.verify(settings(), snapshot=snapshot, source=source))


@cli(name="restore", positional=["snapshot"], help={
    "snapshot": "snapshot id ('inv backup.list' shows them) or 'latest'",
    "stack": "restore only this stack (default: the whole backend)",
    "source": DEST_HELP,
    "bucket": "restore into this bucket (default STATE_BUCKET)",
    "force": "overwrite state written after the snapshot",
})
def restore(c, snapshot, stack=None, source=None, bucket=None, force=False):
    """Restore a snapshot into the state bucket; Pulumi must read it."""
    from statekeeper import restore as work

    check_code(work.run(settings(), snapshot, stack=stack, source=source,
                        bucket=bucket, force=force))


@cli("state", name="history", help={
    "stack": "stack name", "limit": "versions to show (default 20)",
    "json": "print the versions and updates as JSON"})
def state_history(c, stack, limit=None, json=False):
    """Show the versions of a stack's checkpoint and its updates."""
    from statekeeper import history

    check_code(history.show(settings(), stack,
                            limit=number(limit, "--limit", 20, minimum=1),
                            as_json=json))


@cli("state", name="rollback", help={
    "stack": "stack name",
    "to": "S3 version id of the checkpoint ('inv state.history' lists "
          "them)"})
def state_rollback(c, stack, to):
    """Make an earlier checkpoint version the current one."""
    from statekeeper import history

    check_code(history.rollback(settings(), stack, to))


@cli(name="prune", help={
    "keep": "updates to keep per stack in backups/ and history/ "
            "(default 20)",
    "stack": "only this stack (default: every stack)",
    "dry_run": "report what would be deleted; delete nothing"})
def prune(c, keep=None, stack=None, dry_run=False):
    """Delete old files from the backend's backups/ and history/."""
    from statekeeper import prune as work

    check_code(work.run(settings(), keep=number(keep, "--keep", 20),
                        stack=stack, dry_run=dry_run))


# --- migration, export/import, locks ------------------------------------


@cli(name="migrate", help={
    "stack": "stack to migrate (a Pulumi Cloud source may say org/stack)",
    "from_": "source backend URL: s3://BUCKET[/PREFIX], file:///PATH or "
             "https://api.pulumi.com",
    "to": "target backend URL (default: the configured S3 backend)",
    "project": PROJECT_HELP,
    "all": "migrate every stack of the project found on the source",
    "from_passphrase_file": "file holding the source's passphrase when it "
                            "differs (or set "
                            "SOURCE_PULUMI_CONFIG_PASSPHRASE[_FILE])",
    "dry_run": "check and report what would happen; write nothing",
    "force": "replace a target stack that already has resources",
    "allow_pending": "migrate even though the source has pending "
                     "operations (they are dropped and listed)",
    "remove_source": "remove the source stack after verification",
})
def migrate(c, stack=None, from_=None, to=None, project=None, all=False,
            from_passphrase_file=None, dry_run=False, force=False,
            allow_pending=False, remove_source=False):
    """Move live stacks to another backend, re-encrypting their secrets."""
    from statekeeper import migrate as work
    from statekeeper.errors import ConfigError
    from statekeeper.output import Report

    if not from_:
        raise ConfigError("--from is required",
                          "pass the source backend URL, e.g. "
                          "--from file:///path or --from s3://old-bucket")
    if bool(stack) == bool(all):
        raise ConfigError("pass exactly one of --stack and --all",
                          "e.g. inv migrate --stack staging --from URL")
    loaded = settings(project=project)
    if stack:
        loaded.with_stacks((stack.rsplit("/", 1)[-1],))
    options = work.Options(
        source=work.parse_backend(from_, loaded, "--from"),
        target=work.parse_backend(to or loaded.backend_url, loaded, "--to"),
        source_env=work.source_environ(loaded, from_passphrase_file),
        dry_run=dry_run, force=force, allow_pending=allow_pending,
        remove_source=remove_source,
    )
    check_code(work.run(loaded, [stack] if stack else None, options,
                        Report(), all_stacks=all))


@cli("stack", name="export", help={
    "stack": "stack to export (required)", "project": PROJECT_HELP,
    "file": "write here (mode 600) instead of standard output",
})
def stack_export(c, stack=None, project=None, file=None):
    """Export a stack's state; secrets stay encrypted."""
    from statekeeper import transfer
    from statekeeper.output import Report

    check_code(transfer.run_export(settings(stack, project), _one(stack),
                                   file, Report(), sys.stdout))


@cli("stack", name="import", help={
    "stack": "existing stack to import into (required)",
    "project": PROJECT_HELP,
    "file": "export file to import (required)",
    "force": "import even though the file has pending operations",
})
def stack_import(c, stack=None, project=None, file=None, force=False):
    """Check an export file, then import it into an existing stack."""
    from statekeeper import transfer
    from statekeeper.errors import ConfigError
    from statekeeper.output import Report

    if not file:
        raise ConfigError("--file is required",
                          "pass the export file to import")
    check_code(transfer.run_import(settings(stack, project), _one(stack),
                                   file, force=force, report=Report()))


def _one(stack):
    from statekeeper.errors import ConfigError

    if not stack:
        raise ConfigError("--stack is required", "pass --stack NAME")
    return stack


@cli("locks", name="list", default=True, help={
    "stack": "only this stack's locks (default: every stack)",
})
def locks_list(c, stack=None):
    """List lock objects: who holds them, where, pid and age."""
    from statekeeper import locks
    from statekeeper.output import Report

    loaded = settings()
    if stack:
        loaded.with_stacks((stack,))
    check_code(locks.run_list(loaded, stack, Report()))


@cli("locks", name="clear", help={
    "stack": "stack whose locks to remove (required)",
    "project_name": "Pulumi project name, when the stack name is used by "
                    "several projects",
    "yes": "do not ask for confirmation",
    "force": "also remove a lock that may belong to a running update",
})
def locks_clear(c, stack=None, project_name=None, yes=False, force=False):
    """Remove a stack's stale locks after a confirmation."""
    from statekeeper import locks
    from statekeeper.output import Report

    check_code(locks.run_clear(settings(_one(stack)), stack, project_name,
                               force=force, yes=yes, report=Report(),
                               stdin=sys.stdin))


def _namespace():
    root = Collection()
    children: dict[str, Collection] = {}
    for name, made, default in _REGISTERED:
        if name is None:
            root.add_task(made)
            continue
        if name not in children:
            children[name] = Collection(name)
            root.add_collection(children[name])
        children[name].add_task(made, default=default)
    return root


ns = _namespace()
