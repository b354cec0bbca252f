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


def check_code(code):
    """Exit with ``code`` (already explained on the output) unless 0."""
    if code:
        raise Exit(code=code)


STACK_HELP = "stack name (default: the configured PULUMI_STACKS)"
PROJECT_HELP = "Pulumi project directory (default: stacks/)"


# --- local AWS emulator -------------------------------------------------


@cli("sandbox", name="up", help={"port": "port on 127.0.0.1 (default 5000 "
                                         "or a free one)"})
def sandbox_up(c, port=0):
    """Start the local AWS emulator (moto) and point every task at it."""
    from statekeeper import sandbox

    endpoint, started = sandbox.up(WORKSPACE, int(port))
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


# --- least-privilege identity (iam.py) ----------------------------------


# --- backup, restore, history, rollback, prune --------------------------


# --- migration, export/import, locks ------------------------------------


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
