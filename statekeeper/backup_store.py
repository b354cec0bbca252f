"""Where backups live: an S3 prefix or a local directory, with one layout.

Under the destination root (``s3://bucket/prefix`` or a directory)::

    snapshots/<id>/started.json    written before a run's first copy
    snapshots/<id>/manifest.jsonl  written last: its presence means complete
    data/<id>/<key>                bytes first copied by run <id>
    lock.json                      the running backup (S3 only; see
                                   backup_lease)

``<key>`` is the object's key relative to the state root (``meta.yaml``,
``stacks/app/prod.json``...).  A snapshot copies only what changed since
the previous complete one; its manifest points every other object at the
older snapshot that holds its bytes (the entry's ``at``), so restore and
verify never need to guess where bytes live.

The manifest is JSON lines: a header with the totals, one line per object
(key, size, ETag, SHA-256, source version id, ``at``), and a closing
``{"end": N}`` line so a truncated file is detectable.  An S3 PUT and a
local rename are atomic, so a manifest is either whole or absent.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.exceptions as bx

from statekeeper import aws, config
from statekeeper.errors import AwsError, ConfigError
from statekeeper.s3_direct import DirectS3

MANIFEST = "manifest.jsonl"
STARTED = "started.json"
FORMAT = 1
CHUNK = 1024 * 1024
# Objects up to this size are read and written by the client when the
# store cannot hash a server-side copy; larger ones are copied and read.
RELAY_LIMIT = 2 * 1024 * 1024


@dataclass(frozen=True)
class Entry:
    """One object of a snapshot, as the manifest records it."""

    key: str
    size: int
    etag: str
    sha256: str
    version_id: str | None
    modified: str
    at: str

    def line(self) -> str:
        # A dict literal: dataclasses.asdict costs 30 microseconds an entry.
        return json.dumps({
            "key": self.key, "size": self.size, "etag": self.etag,
            "sha256": self.sha256, "version_id": self.version_id,
            "modified": self.modified, "at": self.at,
        }, separators=(",", ":"))

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Entry:
        return cls(key=doc["key"], size=int(doc["size"]), etag=doc["etag"],
                   sha256=doc["sha256"], version_id=doc.get("version_id"),
                   modified=doc.get("modified", ""), at=doc["at"])


@dataclass(frozen=True)
class Header:
    """The first line of a manifest: what the snapshot holds in total."""

    snapshot: str
    started: str
    finished: str
    source: str
    objects: int
    bytes: int
    copied: int
    copied_bytes: int
    locked_stacks: list[str] = field(default_factory=list)
    stacks: list[str] = field(default_factory=list)
    format: int = FORMAT


@dataclass(frozen=True)
class Snapshot:
    """A snapshot found at the destination."""

    id: str
    complete: bool


class CorruptManifest(AwsError):
    """A manifest that does not parse or was cut short."""


class Destination:
    """Common interface of the S3 and local-directory destinations."""

    url: str
    # Leaner reads of the source (and writes, for an S3 destination) on
    # the endpoints that allow it; see statekeeper.s3_direct.
    direct: DirectS3 | None = None

    def put_bytes(self, path: str, body: bytes) -> None:
        raise NotImplementedError

    def put_file(self, path: str, source: Path) -> None:
        raise NotImplementedError

    def read_lines(self, path: str) -> Iterator[bytes]:
        """Lines of a small-to-large text object, streamed; KeyError if
        absent."""
        raise NotImplementedError

    def read_chunks(self, path: str) -> Iterator[bytes]:
        raise NotImplementedError

    def list_paths(self, under: str) -> Iterator[tuple[str, int]]:
        """(path, size) of everything below ``under``, streamed."""
        raise NotImplementedError

    def child_names(self, under: str) -> list[str]:
        """The names one level below ``under`` (snapshot ids)."""
        raise NotImplementedError

    def delete(self, paths: list[str]) -> None:
        raise NotImplementedError

    def copy_in(self, client: Any, bucket: str, key: str, path: str,
                listed_etag: str, size: int) -> Copied:
        """Copy one source object to ``path``; report what was copied."""
        raise NotImplementedError

    def copy_out(self, client: Any, path: str, bucket: str,
                 key: str) -> str:
        """Write ``path`` to s3://bucket/key; return its SHA-256 (hex)."""
        raise NotImplementedError

    # Paths of the layout, relative to the destination root.
    @staticmethod
    def manifest_path(snapshot: str) -> str:
        return f"snapshots/{snapshot}/{MANIFEST}"

    @staticmethod
    def started_path(snapshot: str) -> str:
        return f"snapshots/{snapshot}/{STARTED}"

    @staticmethod
    def data_path(snapshot: str, key: str) -> str:
        return f"data/{snapshot}/{key}"

    def snapshots(self) -> list[Snapshot]:
        """Every snapshot, oldest first (ids sort by time)."""
        seen: dict[str, bool] = {}
        for path, _size in self.list_paths("snapshots/"):
            parts = path.split("/")
            if len(parts) != 3:
                continue
            snapshot, name = parts[1], parts[2]
            seen[snapshot] = seen.get(snapshot, False) or name == MANIFEST
        return [Snapshot(i, seen[i]) for i in sorted(seen)]

    def header(self, snapshot: str) -> Header:
        for line in self.read_lines(self.manifest_path(snapshot)):
            try:
                doc = json.loads(line)
                return Header(**{k: v for k, v in doc.items()
                                 if k in Header.__dataclass_fields__})
            except (ValueError, TypeError):
                break
        raise CorruptManifest(
            f"the manifest of snapshot {snapshot} has no valid header",
            "take a new backup; this snapshot cannot be trusted")

    def entries(self, snapshot: str) -> Iterator[Entry]:
        """The objects of a complete snapshot, in key order, streamed.

        Raises :class:`CorruptManifest` (after the last good entry) when
        the closing line is missing or its count disagrees.
        """
        count = 0
        closed = False
        lines = self.read_lines(self.manifest_path(snapshot))
        for number, line in enumerate(lines):
            if not line.strip() or number == 0:
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                break
            if "end" in doc:
                closed = doc["end"] == count
                break
            try:
                entry = Entry.from_doc(doc)
            except (KeyError, TypeError, ValueError):
                break
            count += 1
            yield entry
        if not closed:
            raise CorruptManifest(
                f"the manifest of snapshot {snapshot} is cut short or "
                "malformed", "take a new backup; this snapshot cannot be "
                "trusted")


@dataclass(frozen=True)
class Copied:
    etag: str
    sha256: str
    version_id: str | None
    size: int


def etag(value: str | None) -> str:
    """An ETag without its quotes: stores differ on quoting it."""
    return (value or "").strip('"')


def _b64_to_hex(value: str) -> str:
    import base64

    return base64.b64decode(value).hex()


class S3Destination(Destination):
    """Snapshots under ``s3://bucket/prefix``, copied server-side.

    The destination bucket is reached with the same endpoint and
    credentials as the state bucket (cross-account or cross-endpoint
    destinations are not supported).
    """

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"
        # Whether the store computes SHA-256 on CopyObject (AWS and moto
        # do, SeaweedFS does not); None until the first copy tells.
        self.copy_checksums: bool | None = None

    def _key(self, path: str) -> str:
        return self.prefix + path

    def check(self, settings: config.Settings) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except bx.ClientError as exc:
            from statekeeper import aws

            if aws.error_code(exc) in {"404", "NoSuchBucket"}:
                raise ConfigError(
                    f"backup bucket '{self.bucket}' does not exist",
                    "create it (versioning on is wise) or fix BACKUP_DEST",
                ) from None
            raise aws.describe(exc, settings,
                               f"reaching backup bucket {self.bucket}")\
                from None

    def put_bytes(self, path: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(path),
                               Body=body)

    def put_file(self, path: str, source: Path) -> None:
        with source.open("rb") as handle:
            self.client.put_object(Bucket=self.bucket, Key=self._key(path),
                                   Body=handle)

    def _body(self, path: str) -> Any:
        """The streaming body of ``path``; KeyError when it is missing."""
        try:
            response = self.client.get_object(Bucket=self.bucket,
                                              Key=self._key(path))
        except bx.ClientError as exc:
            if aws.error_code(exc) in {"NoSuchKey", "404"}:
                raise KeyError(path) from None
            raise
        return response["Body"]

    def read_lines(self, path: str) -> Iterator[bytes]:
        body = self._body(path)
        try:
            yield from body.iter_lines(chunk_size=CHUNK)
        finally:
            body.close()

    def read_chunks(self, path: str) -> Iterator[bytes]:
        body = self._body(path)
        try:
            yield from body.iter_chunks(chunk_size=CHUNK)
        finally:
            body.close()

    def list_paths(self, under: str) -> Iterator[tuple[str, int]]:
        paginator = self.client.get_paginator("list_objects_v2")
        start = len(self.prefix)
        for page in paginator.paginate(Bucket=self.bucket,
                                       Prefix=self._key(under)):
            for item in page.get("Contents", []):
                yield item["Key"][start:], int(item.get("Size", 0))

    def child_names(self, under: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        names = []
        base = self._key(under)
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base,
                                       Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                names.append(common["Prefix"][len(base):].rstrip("/"))
        return names

    def delete(self, paths: list[str]) -> None:
        for start in range(0, len(paths), 1000):
            batch = paths[start:start + 1000]
            done = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": self._key(p)} for p in batch],
                        "Quiet": True})
            errors = done.get("Errors") or []
            if errors:
                first = errors[0]
                raise AwsError(
                    f"could not delete {len(errors)} backup object(s), "
                    f"e.g. {first.get('Key')}: {first.get('Code')}",
                    "check the credentials may delete in the backup bucket")

    def copy_in(self, client: Any, bucket: str, key: str, path: str,
                listed_etag: str, size: int) -> Copied:
        if self.copy_checksums is False and size <= RELAY_LIMIT:
            return self._relay(client, bucket, key, path, listed_etag)
        if self.direct is not None:
            done = self.direct.copy(self.bucket, self._key(path), bucket,
                                    key)
            new_etag, checksum, version = (done.etag, done.sha256,
                                           done.source_version_id)
        else:
            answer = client.copy_object(
                Bucket=self.bucket, Key=self._key(path),
                CopySource={"Bucket": bucket, "Key": key},
                ChecksumAlgorithm="SHA256",
            )
            result = answer.get("CopyObjectResult", {})
            new_etag, checksum, version = (
                result.get("ETag"), result.get("ChecksumSHA256"),
                answer.get("CopySourceVersionId"))
        new_etag = etag(new_etag) or listed_etag
        if checksum and new_etag == listed_etag:
            self.copy_checksums = True
            return Copied(new_etag, _b64_to_hex(checksum), version, size)
        if not checksum:
            self.copy_checksums = False
        # The store gave no SHA-256, or the object changed after the
        # listing: hash the copy itself, which is what a restore returns.
        digest, real_size = sha256_of(self.read_chunks(path))
        return Copied(new_etag, digest, version, real_size)

    def _relay(self, client: Any, bucket: str, key: str, path: str,
               listed_etag: str) -> Copied:
        """Read the object and write it with its SHA-256, which the store
        checks: one read and one write, like a copy plus a read-back."""
        import base64

        if self.direct is not None:
            fetched = self.direct.get(bucket, key)
            body, version = fetched.body, fetched.version_id
            digest = hashlib.sha256(body).digest()
            self.direct.put(self.bucket, self._key(path), body, digest)
            return Copied(etag(fetched.etag) or listed_etag, digest.hex(),
                          version, len(body))
        response = client.get_object(Bucket=bucket, Key=key)
        body = response["Body"].read()
        digest = hashlib.sha256(body).digest()
        client.put_object(Bucket=self.bucket, Key=self._key(path), Body=body,
                          ChecksumSHA256=base64.b64encode(digest).decode())
        return Copied(etag(response.get("ETag")) or listed_etag,
                      digest.hex(), response.get("VersionId"), len(body))

    def copy_out(self, client: Any, path: str, bucket: str,
                 key: str) -> str:
        done = client.copy_object(
            Bucket=bucket, Key=key,
            CopySource={"Bucket": self.bucket, "Key": self._key(path)},
            ChecksumAlgorithm="SHA256",
        )
        checksum = done.get("CopyObjectResult", {}).get("ChecksumSHA256")
        if checksum:
            return _b64_to_hex(checksum)
        digest = hashlib.sha256()
        response = client.get_object(Bucket=bucket, Key=key)
        for chunk in response["Body"].iter_chunks(chunk_size=CHUNK):
            digest.update(chunk)
        return digest.hexdigest()


class LocalDestination(Destination):
    """Snapshots in a local directory; every file lands by atomic rename."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def check(self, settings: config.Settings) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create backup directory {self.root}: "
                f"{exc.strerror}", "fix BACKUP_DEST or its permissions",
            ) from None

    def _path(self, path: str) -> Path:
        parts = path.split("/")
        if path.startswith("/") or ".." in parts or "" in parts[:-1]:
            raise AwsError(f"key '{path}' cannot be stored as a file",
                           "back it up to an s3:// destination instead")
        return self.root.joinpath(*parts)

    def _write(self, path: str, chunks: Iterator[bytes]) -> tuple[str, int]:
        target = self._path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, temp = tempfile.mkstemp(dir=target.parent,
                                    prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return digest.hexdigest(), size

    def put_bytes(self, path: str, body: bytes) -> None:
        self._write(path, iter([body]))

    def put_file(self, path: str, source: Path) -> None:
        with source.open("rb") as handle:
            self._write(path, iter(lambda: handle.read(CHUNK), b""))

    def read_lines(self, path: str) -> Iterator[bytes]:
        try:
            handle = self._path(path).open("rb")
        except FileNotFoundError:
            raise KeyError(path) from None
        with handle:
            yield from handle

    def read_chunks(self, path: str) -> Iterator[bytes]:
        try:
            handle = self._path(path).open("rb")
        except FileNotFoundError:
            raise KeyError(path) from None
        with handle:
            yield from iter(lambda: handle.read(CHUNK), b"")

    def list_paths(self, under: str) -> Iterator[tuple[str, int]]:
        base = self._path(under.rstrip("/"))
        if not base.is_dir():
            return
        for folder, dirs, files in os.walk(base):
            dirs.sort()
            for name in sorted(files):
                if name.startswith(".") and name.endswith(".tmp"):
                    continue
                full = Path(folder, name)
                yield (full.relative_to(self.root).as_posix(),
                       full.stat().st_size)

    def child_names(self, under: str) -> list[str]:
        base = self._path(under.rstrip("/"))
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir())

    def delete(self, paths: list[str]) -> None:
        for path in paths:
            self._path(path).unlink(missing_ok=True)
        for path in paths:
            self._prune_dirs(self._path(path).parent)

    def _prune_dirs(self, folder: Path) -> None:
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    def copy_in(self, client: Any, bucket: str, key: str, path: str,
                listed_etag: str, size: int) -> Copied:
        if self.direct is not None and size <= RELAY_LIMIT:
            fetched = self.direct.get(bucket, key)
            digest, real_size = self._write(path, iter((fetched.body,)))
            return Copied(etag(fetched.etag) or listed_etag, digest,
                          fetched.version_id, real_size)
        response = client.get_object(Bucket=bucket, Key=key)
        body = response["Body"]
        try:
            digest, real_size = self._write(
                path, body.iter_chunks(chunk_size=CHUNK))
        finally:
            body.close()
        return Copied(etag(response.get("ETag")) or listed_etag, digest,
                      response.get("VersionId"), real_size)

    def copy_out(self, client: Any, path: str, bucket: str,
                 key: str) -> str:
        source = self._path(path)
        digest = hashlib.sha256()
        with source.open("rb") as handle:
            for chunk in iter(lambda: handle.read(CHUNK), b""):
                digest.update(chunk)
            handle.seek(0)
            client.put_object(Bucket=bucket, Key=key, Body=handle)
        return digest.hexdigest()


def sha256_of(chunks: Iterable[bytes]) -> tuple[str, int]:
    """(hex SHA-256, size) of a stream of chunks."""
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def open_destination(settings: config.Settings, url: str | None,
                     client: Any, *, flag: str = "--source",
                     ) -> S3Destination | LocalDestination:
    """The destination named by ``url`` (default ``BACKUP_DEST``); ``flag``
    is the task flag that overrides it, for the error message."""
    url = (url or settings.backup_dest or "").strip()
    if not url:
        raise ConfigError(
            "no backup destination: BACKUP_DEST is unset",
            "set BACKUP_DEST to s3://BUCKET/PREFIX or a directory, or pass "
            f"{flag}",
        )
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://"):].partition("/")
        config.check_bucket_name(bucket, "BACKUP_DEST")
        prefix = prefix.strip("/")
        root = f"{prefix}/" if prefix else ""
        state = settings.state_root
        if bucket == settings.bucket and (
                root.startswith(state) or state.startswith(
                    (f"{root}data/", f"{root}snapshots/"))):
            raise ConfigError(
                f"backup destination {url} overlaps the state under "
                f"s3://{settings.bucket}/{settings.state_root}",
                "use another bucket, or a prefix outside the state",
            )
        return S3Destination(client, bucket, prefix)
    if "://" in url and not url.startswith("file://"):
        raise ConfigError(
            f"backup destination '{url}' is neither s3:// nor a directory",
            "use s3://BUCKET/PREFIX or a local path",
        )
    path = Path(url.removeprefix("file://")).expanduser()
    if not path.is_absolute():
        # Relative to the workspace, so cron (run from /) finds the same.
        path = settings.workspace / path
    return LocalDestination(path)
