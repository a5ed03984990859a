"""Where a finished job's artefact files are kept (``storage.artifacts``), so that any web host serves them.

``storage.artifacts`` is empty by default: the files stay in the worker's outputs folder and are served from
there, as before. Set, it is a folder (a shared mount) or ``s3://bucket/prefix`` (boto3; the credentials
come from the environment or the instance role only, ``storage.s3_endpoint_url`` names an S3-compatible
server). When a job ends (completed, failed, cancelled, interrupted) the worker copies the files its kind
lists (``Kind.artifact_files``) there, then records them: ``job_artifacts.location`` (where this job's files
are: a folder path or an ``s3://`` URL) and one ``job_artifact_files`` row per file. The download routes
serve a recorded job from its location (an S3 object is streamed through the web process), and any other
job from the worker's disk.

Paths and keys are made of the configured root, the kind's name, the job id and a file name from the kind's
own list of its outputs (relative, no ``..``, no empty part); a request's file name is only ever looked up
among the recorded names, never joined to anything.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from flask import Response, send_file
from sqlalchemy import BigInteger, Float, String, select
from sqlalchemy.orm import Mapped, mapped_column

from backend.config import ConfigError, resolve_path
from backend.db import db
from backend.errors import NotFound

log = logging.getLogger("backend.jobs.storage")

STREAM_CHUNK = 65_536


class JobArtifacts(db.Model):
    """Where one job's artefact files were copied when it ended."""

    __tablename__ = "job_artifacts"

    job_kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    location: Mapped[str] = mapped_column(String(2000))  # an absolute folder, or s3://bucket/key-prefix


class JobArtifactFile(db.Model):
    """One stored file of a job, by the name the API gives it."""

    __tablename__ = "job_artifact_files"

    job_kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(1000), primary_key=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    modified: Mapped[float] = mapped_column(Float)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bytes": self.bytes, "modified": self.modified}


def safe_name(name: str) -> bool:
    """A relative name of plain parts: nothing that could climb out of the job's folder or prefix."""
    if not name or len(name) > 1000 or "\\" in name or "\0" in name or name.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _safe_id(value: str) -> str:
    if not value or not value.replace("_", "").replace("-", "").isalnum() or len(value) > 32:
        raise ValueError(f"bad job kind or id {value!r}")
    return value


def _open_regular(path: Path) -> Any:
    """The file opened for reading if it is a regular file; a symlink is never followed."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    return os.fdopen(fd, "rb")


# --- the two stores ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderStore:
    root: Path

    def location(self, kind: str, job_id: str) -> str:
        return str(self.root / _safe_id(kind) / _safe_id(job_id))

    def put(self, location: str, name: str, source: Path) -> None:
        target = Path(location) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with _open_regular(source) as reader, tempfile.NamedTemporaryFile(dir=target.parent, delete=False,
                                                                            prefix=".part-") as writer:
            shutil.copyfileobj(reader, writer, STREAM_CHUNK)
        os.replace(writer.name, target)

    def remove(self, location: str) -> None:
        folder = Path(location)
        if folder.is_dir() and not folder.is_symlink() and folder.resolve().is_relative_to(self.root.resolve()):
            shutil.rmtree(folder, ignore_errors=True)


_clients: dict[tuple[str | None, str | None], Any] = {}
_clients_lock = threading.Lock()


def s3_client(endpoint_url: str | None, region: str | None) -> Any:
    """One boto3 S3 client per endpoint and region (clients are thread-safe); credentials from the
    environment, the shared files or the instance role, never from the configuration."""
    key = (endpoint_url or None, region or None)
    with _clients_lock:
        if key not in _clients:
            import boto3

            _clients[key] = boto3.session.Session().client("s3", endpoint_url=key[0], region_name=key[1])
        return _clients[key]


@dataclass(frozen=True)
class S3Store:
    bucket: str
    prefix: str  # without slashes at either end; may be empty
    endpoint_url: str | None
    region: str | None

    def location(self, kind: str, job_id: str) -> str:
        key = "/".join(part for part in (self.prefix, _safe_id(kind), _safe_id(job_id)) if part)
        return f"s3://{self.bucket}/{key}"

    def client(self) -> Any:
        return s3_client(self.endpoint_url, self.region)

    def put(self, location: str, name: str, source: Path) -> None:
        bucket, key = split_s3(location)
        with _open_regular(source) as reader:
            self.client().upload_fileobj(reader, bucket, f"{key}/{name}")

    def remove(self, location: str) -> None:
        bucket, key = split_s3(location)
        client = self.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{key}/"):
            objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if objects:
                client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})


Store = FolderStore | S3Store


def split_s3(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(f"storage.artifacts: {url!r} is not s3://bucket[/prefix]")
    return parsed.netloc, parsed.path.strip("/")


def configured_store(config: Mapping[str, Any]) -> Store | None:
    """The store ``storage.artifacts`` names; None when it is empty (files stay where the job wrote them).
    Raises ConfigError for a value that is neither a folder nor ``s3://bucket[/prefix]``."""
    settings = config.get("storage") or {}
    target = str(settings.get("artifacts") or "").strip()
    if not target:
        return None
    if "://" in target:
        bucket, prefix = split_s3(target)
        region = settings.get("s3_region") or (config.get("aws") or {}).get("region")
        return S3Store(bucket, prefix, settings.get("s3_endpoint_url") or None, region)
    return FolderStore(resolve_path(target).resolve())


def store_of(location: str, config: Mapping[str, Any]) -> Store:
    """The store a recorded location is in (whatever ``storage.artifacts`` says today)."""
    if location.startswith("s3://"):
        bucket, _ = split_s3(location)
        settings = config.get("storage") or {}
        region = settings.get("s3_region") or (config.get("aws") or {}).get("region")
        return S3Store(bucket, "", settings.get("s3_endpoint_url") or None, region)
    return FolderStore(Path(location).parent.parent)


# --- the worker's side -------------------------------------------------------------------------------


def store_artifacts(kind: str, job_id: str, files: Sequence[tuple[str, Path]], config: Mapping[str, Any]) -> int:
    """Copy ``files`` ((name, path) from the kind's own list) to the configured store and record them;
    the number stored. Nothing happens when no store is configured or there are no files. Commits."""
    store = configured_store(config)
    if store is None or not files:
        return 0
    location = store.location(kind, job_id)
    stored: list[JobArtifactFile] = []
    for name, path in files:
        if not safe_name(name):
            log.warning("%s job %s: artefact %r not stored (not a plain relative name)", kind, job_id, name)
            continue
        try:
            info = path.lstat()
            store.put(location, name, path)
        except OSError as exc:  # a file that went away, or one that is no regular file any more
            log.warning("%s job %s: artefact %s not stored: %s", kind, job_id, name, exc)
            continue
        stored.append(JobArtifactFile(job_kind=kind, job_id=job_id, name=name, bytes=info.st_size,
                                      modified=info.st_mtime))
    db.session.execute(db.delete(JobArtifactFile).where(JobArtifactFile.job_kind == kind,
                                                        JobArtifactFile.job_id == job_id))
    record = db.session.get(JobArtifacts, (kind, job_id))
    if record is None:
        db.session.add(JobArtifacts(job_kind=kind, job_id=job_id, location=location))
    else:
        record.location = location
    db.session.add_all(stored)
    db.session.commit()
    log.info("%s job %s: %d artefact files stored in %s", kind, job_id, len(stored), location)
    return len(stored)


# --- the web side ------------------------------------------------------------------------------------


def stored_files(kind: str, job_id: str) -> list[JobArtifactFile] | None:
    """The job's recorded files, by name; None when its files were never copied to a store."""
    if db.session.get(JobArtifacts, (kind, job_id)) is None:
        return None
    return list(db.session.scalars(select(JobArtifactFile).where(JobArtifactFile.job_kind == kind,
                                                                 JobArtifactFile.job_id == job_id)
                                   .order_by(JobArtifactFile.name)))


def _s3_body(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(STREAM_CHUNK)
    finally:
        body.close()


def send_stored(kind: str, job_id: str, name: str, config: Mapping[str, Any], not_found: str) -> Response | None:
    """The download of a recorded file (NotFound with ``not_found`` for a name the record lacks); None when
    the job's files were never copied to a store (the caller serves them from the disk)."""
    record = db.session.get(JobArtifacts, (kind, job_id))
    if record is None:
        return None
    # not a plain name (a NUL byte, which PostgreSQL refuses in a query, among them): never stored
    entry = db.session.get(JobArtifactFile, (kind, job_id, name)) if safe_name(name) else None
    if entry is None:
        raise NotFound(not_found)
    download = PurePosixPath(entry.name).name
    text = PurePosixPath(entry.name).suffix in (".log", ".txt")
    store = store_of(record.location, config)
    if isinstance(store, FolderStore):
        try:
            handle = _open_regular(Path(record.location) / entry.name)
        except OSError:
            raise NotFound(f"{not_found} (its stored copy is gone)") from None
        return send_file(handle, as_attachment=True, download_name=download,
                         mimetype="text/plain" if text else None)
    bucket, key = split_s3(record.location)
    client = store.client()
    try:
        obj = client.get_object(Bucket=bucket, Key=f"{key}/{entry.name}")
    except client.exceptions.NoSuchKey:
        raise NotFound(f"{not_found} (its stored copy is gone)") from None
    response = Response(_s3_body(obj["Body"]), mimetype="text/plain" if text else "application/octet-stream",
                        direct_passthrough=True)
    response.headers["Content-Length"] = str(obj["ContentLength"])
    response.headers.set("Content-Disposition", "attachment", filename=download)
    return response


def forget(kind: str, job_id: str, config: Mapping[str, Any]) -> None:
    """Remove the job's stored copies and their records (its job is deleted). The caller commits."""
    record = db.session.get(JobArtifacts, (kind, job_id))
    if record is None:
        return
    try:
        store_of(record.location, config).remove(record.location)
    except Exception:  # the store unreachable: the rows go anyway, the objects are logged as left behind
        log.exception("%s job %s: its stored artefacts at %s could not be removed", kind, job_id, record.location)
    db.session.execute(db.delete(JobArtifactFile).where(JobArtifactFile.job_kind == kind,
                                                        JobArtifactFile.job_id == job_id))
    db.session.delete(record)
