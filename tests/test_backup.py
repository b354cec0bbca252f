"""``inv backup``, ``inv backup.list`` and ``inv backup.verify`` through the
real command line, against the moto server over HTTP.

Covers incremental snapshots, verify catching damage, SIGKILL at several
points, a throttling server, overlapping runs and a cron-like environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import boto3
import pytest
from backup_support import (
    BACKUP_BUCKET,
    backup_env,
    make_bucket,
    seed,
    snapshots,
)
from conftest import REPO, VENV_BIN, assert_clean_failure
from fault_proxy import FaultProxy

SUMMARY = re.compile(
    r"^backup (\S+): (\d+) objects, .* \((\d+) copied, .*\), [\d.]+ s, ",
    re.MULTILINE)


@pytest.fixture
def state(ws, s3):
    """A versioned state bucket with meta.yaml, a checkpoint, history
    files and a lock object (no Pulumi CLI needed for these tests)."""
    bucket = ws.env["STATE_BUCKET"]
    make_bucket(s3, bucket)
    s3.put_object(Bucket=bucket, Key=".pulumi/meta.yaml",
                  Body=b"version: 1\n")
    s3.put_object(
        Bucket=bucket, Key=".pulumi/stacks/app/staging.json",
        Body=json.dumps({"version": 3, "checkpoint": {
            "stack": "organization/app/staging",
            "latest": {"resources": []}}}).encode())
    seed(s3, bucket, 40)
    backup_env(ws, s3)
    return bucket


def summary(done: subprocess.CompletedProcess) -> tuple[str, int, int]:
    assert done.returncode == 0, done.stdout + done.stderr
    match = SUMMARY.search(done.stdout)
    assert match, done.stdout
    return match.group(1), int(match.group(2)), int(match.group(3))


def data_keys(s3, snapshot: str) -> list[str]:
    listing = s3.list_objects_v2(Bucket=BACKUP_BUCKET,
                                 Prefix=f"nightly/data/{snapshot}/")
    return [item["Key"] for item in listing.get("Contents", [])]


def test_backup_copies_everything_then_only_changes(ws, s3, state):
    first = ws.inv("backup")
    snap1, objects, copied = summary(first)
    # meta.yaml, the checkpoint and 40 history files; never the lock.
    assert (objects, copied) == (42, 42)
    assert ws.env["PULUMI_CONFIG_PASSPHRASE"] not in first.stdout + \
        first.stderr

    second = ws.inv("backup")
    snap2, objects, copied = summary(second)
    assert (objects, copied) == (42, 0)
    assert data_keys(s3, snap2) == []

    s3.put_object(Bucket=state, Key=".pulumi/stacks/app/staging.json",
                  Body=b'{"version": 3, "checkpoint": {"stack": "x"}}')
    s3.put_object(Bucket=state, Key=".pulumi/history/app/staging/new.json",
                  Body=b"{}")
    snap3, objects, copied = summary(ws.inv("backup"))
    assert (objects, copied) == (43, 2)

    rows = snapshots(ws)
    assert [r["id"] for r in rows] == [snap1, snap2, snap3]
    assert all(r["complete"] for r in rows)
    assert [r["objects"] for r in rows] == [42, 42, 43]
    table = ws.inv("backup.list")
    assert table.returncode == 0
    assert "3 snapshot(s)" in table.stdout and snap2 in table.stdout

    verified = ws.inv("backup.verify", "latest")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"verify {snap3}: OK, 43 objects checked" in verified.stdout


def test_backup_to_a_local_directory(ws, s3, state, tmp_path):
    target = tmp_path / "backups"
    first = ws.inv("backup", "--to", str(target))
    snap1, objects, copied = summary(first)
    assert (objects, copied) == (42, 42)
    assert (target / "snapshots" / snap1 / "manifest.jsonl").is_file()
    restored = target / "data" / snap1 / "meta.yaml"
    assert restored.read_bytes() == b"version: 1\n"
    assert not list(target.rglob("*.tmp"))

    _, _, copied = summary(ws.inv("backup", "--to", str(target)))
    assert copied == 0
    done = ws.inv("backup.verify", "latest", "--source", str(target))
    assert done.returncode == 0, done.stdout + done.stderr


def test_verify_catches_a_changed_byte_a_missing_object_and_no_manifest(
        ws, s3, state):
    snap, _, _ = summary(ws.inv("backup"))
    assert ws.inv("backup.verify", snap).returncode == 0

    key = f"nightly/data/{snap}/meta.yaml"
    s3.put_object(Bucket=BACKUP_BUCKET, Key=key, Body=b"version: 2\n")
    changed = ws.inv("backup.verify", snap)
    assert changed.returncode == 1
    assert re.search(r"changed\s+meta\.yaml", changed.stdout)
    assert "1 problem(s)" in changed.stdout

    s3.put_object(Bucket=BACKUP_BUCKET, Key=key, Body=b"version: 1\n")
    s3.delete_object(Bucket=BACKUP_BUCKET,
                     Key=f"nightly/data/{snap}/stacks/app/staging.json")
    missing = ws.inv("backup.verify", snap)
    assert missing.returncode == 1
    assert re.search(r"missing\s+stacks/app/staging\.json", missing.stdout)

    s3.delete_object(Bucket=BACKUP_BUCKET,
                     Key=f"nightly/snapshots/{snap}/manifest.jsonl")
    no_manifest = ws.inv("backup.verify", snap)
    assert_clean_failure(no_manifest, snap, "no manifest")
    assert [r["complete"] for r in snapshots(ws)] == [False]
    # An incomplete snapshot is never the base of the next one.
    _, _, copied = summary(ws.inv("backup"))
    assert copied == 42


def test_verify_of_an_unknown_snapshot_names_the_fix(ws, s3, state):
    snap, _, _ = summary(ws.inv("backup"))
    done = ws.inv("backup.verify", snap[:-1] + "x")
    assert_clean_failure(done, "is not at", snap)


def test_backup_without_a_destination_fails_cleanly(ws, s3, state):
    del ws.env["BACKUP_DEST"]
    assert_clean_failure(ws.inv("backup"), "BACKUP_DEST is unset")
    assert_clean_failure(ws.inv("backup", "--to", "s3://No_Such/x"),
                         "not a valid S3 bucket name")
    assert_clean_failure(ws.inv("backup", "--to", "s3://missing-bucket/x"),
                         "backup bucket 'missing-bucket' does not exist")


def _started(s3, snapshot_count: int) -> bool:
    listing = s3.list_objects_v2(Bucket=BACKUP_BUCKET,
                                 Prefix="nightly/snapshots/")
    return len(listing.get("Contents", [])) > snapshot_count


def _data_count(s3) -> int:
    listing = s3.list_objects_v2(Bucket=BACKUP_BUCKET, Prefix="nightly/data/")
    return listing.get("KeyCount", 0)


def test_sigkill_at_any_point_leaves_no_complete_snapshot(ws, s3, state):
    seed(s3, state, 300, prefix=".pulumi/history/more/s")
    command = [str(VENV_BIN / "inv"), "--search-root", str(ws.root),
               "backup", "--threads", "1"]
    # Kill points: at once, once the run has announced its snapshot, and
    # in the middle of copying.
    waits = [
        lambda: time.sleep(0.2) or True,
        lambda: _started(s3, 0),
        lambda: _data_count(s3) >= 60,
    ]
    for until in waits:
        run = subprocess.Popen(command, env=ws.env, cwd=ws.root,
                               stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not until() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert run.poll() is None, "the backup ended before the kill"
        run.send_signal(signal.SIGKILL)
        run.wait()
        run.stdout.close()
        run.stderr.close()
        assert not any(r["complete"] for r in snapshots(ws))

    done = ws.inv("backup")
    snap, objects, _ = summary(done)
    assert objects == 342
    rows = snapshots(ws)
    assert [r["id"] for r in rows if r["complete"]] == [snap]
    # The dead runs' leftovers are pruned once a complete snapshot exists.
    assert all(r["complete"] for r in rows)
    assert ws.inv("backup.verify", snap).returncode == 0


def test_throttling_is_retried(ws, s3, state, moto):
    with FaultProxy(moto.endpoint, failures=6) as proxy:
        env = dict(ws.env, AWS_ENDPOINT_URL=proxy.endpoint)
        done = ws.inv("backup", env=env)
        assert proxy.refused == 6 and proxy.passed > 40
    snap, objects, copied = summary(done)
    assert (objects, copied) == (42, 42)
    assert ws.inv("backup.verify", snap).returncode == 0


def test_a_copy_that_fails_after_answering_200_is_retried(
        ws, s3, state, moto):
    """S3 may answer a CopyObject 200 and then put the error in the body:
    such a copy is tried again, not taken for a copy without a SHA-256
    (which would send the rest of the run down the slower relay path)."""
    copies, relays = [], []

    def fail_three_copies(headers, body: bytes) -> bytes:
        if headers.get("x-amz-checksum-sha256"):
            relays.append(headers)
        elif "x-amz-copy-source" in headers:
            copies.append(headers["x-amz-copy-source"])
            if len(copies) <= 3:
                return (b'<?xml version="1.0" encoding="UTF-8"?>\n'
                        b"<Error><Code>InternalError</Code><Message>We "
                        b"encountered an internal error.</Message></Error>")
        return body

    with FaultProxy(moto.endpoint, failures=0,
                    rewrite=fail_three_copies) as proxy:
        done = ws.inv("backup",
                      env=dict(ws.env, AWS_ENDPOINT_URL=proxy.endpoint))
    snap, objects, copied = summary(done)
    assert (objects, copied) == (42, 42)
    assert (len(copies), len(relays)) == (45, 0)
    assert ws.inv("backup.verify", snap).returncode == 0


def test_overlapping_runs_never_corrupt_a_snapshot(ws, s3, state):
    seed(s3, state, 200, prefix=".pulumi/history/more/s")
    command = [str(VENV_BIN / "inv"), "--search-root", str(ws.root),
               "backup", "--threads", "2"]
    runs = [subprocess.Popen(command, env=ws.env, cwd=ws.root, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(2)]
    results = [(r.wait(timeout=300), *r.communicate()) for r in runs]
    codes = sorted(code for code, _, _ in results)
    assert codes in ([0, 0], [0, 75]), results
    for code, out, err in results:
        if code == 75:
            assert "another backup to" in err and "Traceback" not in err
            assert out == ""
    complete = [r["id"] for r in snapshots(ws) if r["complete"]]
    assert complete
    for snap in complete:
        assert ws.inv("backup.verify", snap).returncode == 0


def test_waiting_run_queues_behind_the_running_one(ws, s3, state):
    command = [str(VENV_BIN / "inv"), "--search-root", str(ws.root),
               "backup", "--threads", "1", "--wait", "120"]
    seed(s3, state, 150, prefix=".pulumi/history/more/s")
    runs = [subprocess.Popen(command, env=ws.env, cwd=ws.root, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(2)]
    results = [(r.wait(timeout=300), *r.communicate()) for r in runs]
    assert [code for code, _, _ in results] == [0, 0], results
    rows = snapshots(ws)
    assert len(rows) == 2 and all(r["complete"] for r in rows)


def test_cron_wrapper_runs_with_an_empty_environment_from_root(
        ws, s3, state, tmp_path):
    (ws.root / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "backup-cron.sh",
                ws.root / "scripts" / "backup-cron.sh")
    (ws.root / ".venv").symlink_to(VENV_BIN.parent)
    keys = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "AWS_REGION", "STATE_BUCKET", "PULUMI_CONFIG_PASSPHRASE",
            "BACKUP_DEST")
    ws.write_env_file("".join(f"{k}={ws.env[k]}\n" for k in keys))
    home = tmp_path / "cron-home"
    home.mkdir()
    done = subprocess.run(
        ["env", "-i", "PATH=/usr/bin:/bin", f"HOME={home}",
         "/bin/sh", "-c", f"{ws.root}/scripts/backup-cron.sh"],
        cwd="/", text=True, capture_output=True, timeout=300)
    snap, objects, copied = summary(done)
    assert (objects, copied) == (42, 42)
    assert done.stdout.count("\n") == 1, done.stdout
    assert done.stderr == ""
    assert ws.env["PULUMI_CONFIG_PASSPHRASE"] not in done.stdout
    assert [r["id"] for r in snapshots(ws)] == [snap]


def test_retention_keeps_the_newest_and_dry_run_changes_nothing(
        ws, s3, state):
    ids = [summary(ws.inv("backup"))[0] for _ in range(3)]
    ws.env["BACKUP_KEEP"] = "1"
    dry = ws.inv("backup", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would prune snapshot {ids[0]}" in dry.stdout
    assert "would back up 42 objects" in dry.stdout
    assert [r["id"] for r in snapshots(ws)] == ids

    latest, _, _ = summary(ws.inv("backup"))
    assert [r["id"] for r in snapshots(ws)] == [latest]
    # The first snapshot's bytes still back the kept one; nothing else.
    assert len(data_keys(s3, ids[0])) == 42
    for old in ids[1:]:
        assert data_keys(s3, old) == []
    assert ws.inv("backup.verify", latest).returncode == 0


def test_backup_says_when_a_deploy_holds_a_stack_lock(ws, s3, state):
    s3.put_object(
        Bucket=state,
        Key=".pulumi/locks/organization/app/staging/1a2b.json",
        Body=b'{"pid": 4242, "hostname": "ci", "username": "ci"}')
    done = ws.inv("backup")
    snap, objects, _ = summary(done)
    assert objects == 42
    assert "staging" in done.stderr and "consistent" in done.stderr
    assert "locked during backup: staging" in done.stdout
    assert snapshots(ws)[0]["locked_stacks"] == ["staging"]


def test_manifest_lists_key_size_sha256_and_version(ws, s3, state):
    snap, _, _ = summary(ws.inv("backup"))
    body = s3.get_object(
        Bucket=BACKUP_BUCKET,
        Key=f"nightly/snapshots/{snap}/manifest.jsonl")["Body"].read()
    lines = [json.loads(line) for line in body.splitlines()]
    header, entries, end = lines[0], lines[1:-1], lines[-1]
    assert header["objects"] == 42 == len(entries) == end["end"]
    meta = next(e for e in entries if e["key"] == "meta.yaml")
    assert meta["sha256"] == hashlib.sha256(b"version: 1\n").hexdigest()
    assert meta["size"] == 11
    current = s3.head_object(Bucket=state, Key=".pulumi/meta.yaml")
    assert meta["version_id"] == current["VersionId"]
    assert [e["key"] for e in entries] == sorted(e["key"] for e in entries)


def test_relative_destination_is_under_the_workspace(ws, s3, state,
                                                    tmp_path: Path):
    # A relative destination is taken from the workspace, not the cwd.
    done = ws.inv("backup", "--to", "local-backups", cwd=tmp_path)
    summary(done)
    assert (ws.root / "local-backups" / "snapshots").is_dir()


def _without_copy_checksums(headers, body: bytes) -> bytes:
    """Answer CopyObject as SeaweedFS does: without the copy's SHA-256."""
    if "x-amz-copy-source" not in headers:
        return body
    return re.sub(rb"<ChecksumSHA256>[^<]*</ChecksumSHA256>", b"", body)


def _manifest(s3, snap: str) -> list[dict]:
    body = s3.get_object(
        Bucket=BACKUP_BUCKET,
        Key=f"nightly/snapshots/{snap}/manifest.jsonl")["Body"].read()
    return [json.loads(line) for line in body.splitlines()[1:-1]]


def test_store_that_cannot_hash_copies_gets_each_object_relayed(
        ws, s3, state, moto):
    """Such a store (SeaweedFS) gets each object read and written by the
    client, throttled reads are retried, and the manifest still holds the
    SHA-256 of every stored byte."""
    writes = {"copy": 0, "relay": 0}

    def count(headers, body: bytes) -> bytes:
        if headers.get("x-amz-checksum-sha256"):
            writes["relay"] += 1
        elif "x-amz-copy-source" in headers:
            writes["copy"] += 1
        return _without_copy_checksums(headers, body)

    with FaultProxy(moto.endpoint, failures=5, rewrite=count,
                    match=lambda method, path: method == "GET"
                    and "/.pulumi/history/" in path) as proxy:
        done = ws.inv("backup", "--threads", "4",
                      env=dict(ws.env, AWS_ENDPOINT_URL=proxy.endpoint))
        assert proxy.refused == 5
    snap, objects, copied = summary(done)
    assert (objects, copied) == (42, 42)
    assert writes["relay"] >= 38 and writes["copy"] <= 4, writes
    for entry in _manifest(s3, snap):
        stored = s3.get_object(Bucket=BACKUP_BUCKET,
                               Key=f"nightly/data/{snap}/{entry['key']}")
        source = s3.get_object(Bucket=state, Key=f".pulumi/{entry['key']}")
        body = stored["Body"].read()
        assert body == source["Body"].read()
        assert entry["sha256"] == hashlib.sha256(body).hexdigest()
        assert entry["version_id"] == source["VersionId"]
    assert ws.inv("backup.verify", snap).returncode == 0


ODD_KEYS = [".pulumi/history/odd/with space.json",
            ".pulumi/history/odd/plus+and%25percent.json",
            ".pulumi/history/odd/ünï-cødé~tilde.json",
            ".pulumi/history/odd/a=b&c;d,e(f)'g'.json"]


def test_keys_that_need_escaping_are_signed_and_copied_intact(
        ws, s3, state, moto, tmp_path):
    """With IAM enforced, moto checks every request's SigV4 signature."""
    for key in ODD_KEYS:
        s3.put_object(Bucket=state, Key=key, Body=key.encode())
    iam = boto3.client("iam", endpoint_url=moto.endpoint,
                       region_name="us-east-1",
                       aws_access_key_id="testing",
                       aws_secret_access_key="testing-secret-key")
    iam.create_user(UserName="backup")
    iam.put_user_policy(UserName="backup", PolicyName="s3",
                        PolicyDocument=json.dumps({
                            "Version": "2012-10-17", "Statement": [{
                                "Effect": "Allow", "Action": "s3:*",
                                "Resource": "*"}]}))
    access = iam.create_access_key(UserName="backup")["AccessKey"]
    ws.env.update(AWS_ACCESS_KEY_ID=access["AccessKeyId"],
                  AWS_SECRET_ACCESS_KEY=access["SecretAccessKey"])
    moto.enforce_iam()
    try:
        with FaultProxy(moto.endpoint, failures=0,
                        rewrite=_without_copy_checksums) as proxy:
            relayed = ws.inv(
                "backup", env=dict(ws.env, AWS_ENDPOINT_URL=proxy.endpoint))
        copied_in_store = ws.inv("backup", "--to",
                                 f"s3://{BACKUP_BUCKET}/copies")
        to_dir = ws.inv("backup", "--to", str(tmp_path / "dir"))
    finally:
        moto.relax_iam()

    relayed_snap, objects, copied = summary(relayed)
    assert (objects, copied) == (46, 46)
    copied_snap, objects, copied = summary(copied_in_store)
    assert (objects, copied) == (46, 46)
    dir_snap, objects, copied = summary(to_dir)
    assert (objects, copied) == (46, 46)
    for key in ODD_KEYS:
        relative = key.removeprefix(".pulumi/")
        for stored in (f"nightly/data/{relayed_snap}/{relative}",
                       f"copies/data/{copied_snap}/{relative}"):
            body = s3.get_object(Bucket=BACKUP_BUCKET, Key=stored)["Body"]
            assert body.read() == key.encode()
        local = tmp_path / "dir" / "data" / dir_snap / relative
        assert local.read_bytes() == key.encode()


def test_a_run_on_another_host_keeps_this_one_out(ws, s3, state):
    """The destination's lock.json stands for a run on another host: this
    run exits 75 (or waits with --wait) and writes nothing."""
    holder = {"host": "ci-runner-7", "pid": 4242, "token": "theirs",
              "started": "2026-12-03T04:17:00+00:00"}
    s3.put_object(Bucket=BACKUP_BUCKET, Key="nightly/lock.json",
                  Body=json.dumps(holder).encode())

    done = ws.inv("backup")
    assert done.returncode == 75
    assert_clean_failure(done, "another backup to s3://test-backups/nightly/",
                         "host ci-runner-7, pid 4242", "--wait")
    started = time.monotonic()
    waited = ws.inv("backup", "--wait", "3")
    assert waited.returncode == 75 and time.monotonic() - started >= 3
    assert snapshots(ws) == []
    lock = s3.get_object(Bucket=BACKUP_BUCKET, Key="nightly/lock.json")
    assert json.loads(lock["Body"].read()) == holder

    s3.delete_object(Bucket=BACKUP_BUCKET, Key="nightly/lock.json")
    summary(ws.inv("backup"))
    listing = s3.list_objects_v2(Bucket=BACKUP_BUCKET, Prefix="nightly/lock")
    assert "Contents" not in listing, "a finished run releases its lock"


def test_a_lock_left_by_a_killed_run_on_this_host_is_taken_over(
        ws, s3, state):
    victim = subprocess.Popen(["sleep", "60"])
    victim.kill()
    victim.wait()
    s3.put_object(Bucket=BACKUP_BUCKET, Key="nightly/lock.json",
                  Body=json.dumps({"host": socket.gethostname(),
                                   "pid": victim.pid, "token": "dead",
                                   "started": "2026-12-03T04:17:00+00:00",
                                   }).encode())
    done = ws.inv("backup")
    summary(done)
    assert f"took over a stale backup lock of {socket.gethostname()} " \
        f"(pid {victim.pid})" in done.stderr


def test_a_lock_is_stale_after_15_minutes_or_when_its_local_run_died():
    from datetime import timedelta

    from statekeeper.backup_lease import stale

    elsewhere = {"host": "elsewhere", "pid": os.getpid()}
    assert not stale(elsewhere, timedelta(minutes=14), host="here")
    assert stale(elsewhere, timedelta(minutes=16), host="here")
    mine = {"host": "here", "pid": os.getpid()}
    assert not stale(mine, timedelta(seconds=5), host="here")
    victim = subprocess.Popen(["true"])
    victim.wait()
    assert stale({"host": "here", "pid": victim.pid}, timedelta(seconds=5),
                 host="here")


def test_the_lock_is_renewed_and_a_run_that_lost_it_stops(
        s3, moto, monkeypatch):
    """A run that stalls past the stale limit may see another take its
    lock over; it must then not complete its snapshot."""
    from statekeeper import backup_lease
    from statekeeper.backup_store import S3Destination
    from statekeeper.output import Report

    monkeypatch.setattr(backup_lease, "RENEW_SECONDS", 0.2)
    s3.create_bucket(Bucket=BACKUP_BUCKET)
    lease = backup_lease.Lease(S3Destination(s3, BACKUP_BUCKET, "nightly"),
                               Report())
    assert lease.acquire(time.monotonic())
    first = lease.etag
    deadline = time.monotonic() + 10
    while lease.etag == first and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lease.etag != first, "the lock was never renewed"
    lease.check()

    s3.put_object(Bucket=BACKUP_BUCKET, Key="nightly/lock.json",
                  Body=json.dumps({"host": "h2", "pid": 7,
                                   "token": "taker"}).encode())
    while not lease.lost and time.monotonic() < deadline + 10:
        time.sleep(0.05)
    with pytest.raises(backup_lease.Busy, match="lost its lock"):
        lease.check()
    lease.release()
    taker = s3.get_object(Bucket=BACKUP_BUCKET, Key="nightly/lock.json")
    assert json.loads(taker["Body"].read())["token"] == "taker"
