"""`inv locks` and `inv locks.clear`: a killed `pulumi up` leaves a lock
that blocks every later deploy; the tasks show it and remove it safely.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta

from conftest import assert_clean_failure
from test_migrate import copy_project, deploy, pulumi, target_url

LOCKS = ".pulumi/locks/organization/yaml-app/staging/"


def lock_keys(s3) -> list[str]:
    listed = s3.list_objects_v2(Bucket="test-pulumi-state", Prefix=LOCKS)
    return [o["Key"] for o in listed.get("Contents", [])]


def write_lock(s3, *, pid: int, hostname: str, age: timedelta,
               lock_id: str = "5b1b5c8e-0000-4000-8000-000000000001") -> str:
    """A lock object in the format pkg/backend/diy/lock.go writes."""
    stamp = datetime.now(UTC) - age
    body = {"pid": pid, "username": "ci", "hostname": hostname,
            "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.%f123Z")}
    key = f"{LOCKS}{lock_id}.json"
    s3.put_object(Bucket="test-pulumi-state", Key=key,
                  Body=json.dumps(body))
    return key


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def kill_up_once_locked(ws, project, s3) -> None:
    """Start `pulumi up` and SIGKILL it (and its language host) as soon
    as its lock object exists."""
    env = dict(ws.env)
    env["PATH"] = f"{ws.root / '.tools' / 'bin'}:{env['PATH']}"
    env["PULUMI_BACKEND_URL"] = target_url(ws)
    (project / "Pulumi.staging.yaml").write_text(
        (project / "Pulumi.staging.yaml").read_text().replace(
            "bonjour", "hola"))
    process = subprocess.Popen(
        ["pulumi", "up", "--yes", "--stack", "staging", "--non-interactive"],
        cwd=project, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not lock_keys(s3):
        assert process.poll() is None, "pulumi up ended before locking"
        assert time.monotonic() < deadline, "no lock appeared"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_killed_update_leaves_a_lock_that_clear_removes(ws, s3, pulumi_cli,
                                                        tmp_path):
    s3.create_bucket(Bucket="test-pulumi-state")
    project = copy_project(tmp_path)
    deploy(ws, project, target_url(ws))
    kill_up_once_locked(ws, project, s3)
    assert len(lock_keys(s3)) == 1

    blocked = pulumi(ws, project, "up", "--yes", "--stack", "staging",
                     backend=target_url(ws), check=False)
    assert blocked.returncode != 0
    assert "currently locked" in blocked.stderr

    listed = ws.inv("locks")
    assert listed.returncode == 0, listed.stderr
    row = next(ln for ln in listed.stdout.splitlines()
               if ln.startswith("staging"))
    assert "yaml-app" in row and socket.gethostname() in row
    assert "gone" in row
    assert "1 lock(s), 1 stale" in listed.stdout
    assert "inv locks.clear --stack staging" in listed.stderr

    cleared = ws.inv("locks.clear", "--stack", "staging", input="y\n")
    assert cleared.returncode == 0, cleared.stderr
    assert "removed" in cleared.stdout
    assert lock_keys(s3) == []

    pulumi(ws, project, "up", "--yes", "--stack", "staging",
           backend=target_url(ws))


def test_young_lock_of_another_host_needs_force(ws, s3):
    s3.create_bucket(Bucket="test-pulumi-state")
    key = write_lock(s3, pid=4242, hostname="build-agent-7",
                     age=timedelta(minutes=2))

    listed = ws.inv("locks", "--stack", "staging")
    assert "build-agent-7" in listed.stdout and "4242" in listed.stdout
    assert "1 lock(s) on stack 'staging', 0 stale" in listed.stdout

    refused = ws.inv("locks.clear", "--stack", "staging", "--yes")
    assert refused.returncode == 3
    assert_clean_failure(refused, "build-agent-7", "--force")
    assert lock_keys(s3) == [key]

    forced = ws.inv("locks.clear", "--stack", "staging", "--yes", "--force")
    assert forced.returncode == 0, forced.stderr
    assert lock_keys(s3) == []


def test_old_lock_of_another_host_is_cleared_after_confirmation(ws, s3):
    s3.create_bucket(Bucket="test-pulumi-state")
    key = write_lock(s3, pid=4242, hostname="build-agent-7",
                     age=timedelta(hours=3))

    declined = ws.inv("locks.clear", "--stack", "staging", input="n\n")
    assert_clean_failure(declined, "not confirmed")
    assert lock_keys(s3) == [key]

    accepted = ws.inv("locks.clear", "--stack", "staging", input="y\n")
    assert accepted.returncode == 0, accepted.stderr
    assert lock_keys(s3) == []


def test_lock_of_a_running_process_here_is_kept(ws, s3):
    s3.create_bucket(Bucket="test-pulumi-state")
    key = write_lock(s3, pid=os.getpid(), hostname=socket.gethostname(),
                     age=timedelta(days=2))

    refused = ws.inv("locks.clear", "--stack", "staging", "--yes")

    assert_clean_failure(refused, "still running", f"pid {os.getpid()}")
    assert lock_keys(s3) == [key]


def test_stale_locks_for_doctor(ws, s3):
    from statekeeper import locks

    s3.create_bucket(Bucket="test-pulumi-state")
    write_lock(s3, pid=dead_pid(), hostname=socket.gethostname(),
               age=timedelta(seconds=5), lock_id="gone")
    write_lock(s3, pid=os.getpid(), hostname=socket.gethostname(),
               age=timedelta(days=1), lock_id="alive")
    write_lock(s3, pid=7, hostname="elsewhere", age=timedelta(minutes=1),
               lock_id="young")
    write_lock(s3, pid=8, hostname="elsewhere", age=timedelta(hours=1),
               lock_id="old")

    stale = locks.stale_locks(ws.settings(), min_age_seconds=600)

    assert sorted(lock.lock_id for lock in stale) == ["gone", "old"]
    assert all(lock.fix == "inv locks.clear --stack staging "
               "--project-name yaml-app" for lock in stale)
    old = next(lock for lock in stale if lock.lock_id == "old")
    assert 3500 < old.age_seconds < 3700


def test_nothing_to_clear(ws, s3):
    s3.create_bucket(Bucket="test-pulumi-state")
    done = ws.inv("locks.clear", "--stack", "staging")
    assert done.returncode == 0, done.stderr
    assert "nothing to clear" in done.stdout
    listed = ws.inv("locks")
    assert "locks: 0 lock(s), 0 stale" in listed.stdout
