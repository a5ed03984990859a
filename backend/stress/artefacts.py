"""A stress job's files on the worker's disk (evalscope's outputs and the job's log), listed and served by
name, and removed when old. With ``storage.artifacts`` set, the worker copies them there when the job ends
(``backend/jobs/storage.py``), and the files routes serve a job so copied from there instead.

A file is served only by a name taken from the job's own list, never by a path from a request: the list
walks the job's output directory without following links, and leaves out every symlink, so a link placed
in the folder (by evalscope, by a person) can point nowhere the platform serves. The name a request
gives is looked up in that list; nothing of it is ever joined to a path.

``python -m backend.stress.artefacts cleanup [--days N] [--dry-run]`` removes the files of jobs that
finished more than ``storage.cleanup_days`` days ago (their database rows, and so their results, stay);
``--dry-run`` lists what it would remove and removes nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from backend.db import db
from backend.errors import NotFound
from backend.stress.command import job_paths
from backend.stress.models import FINISHED, StressJob, utcnow

LOG_NAME = "job.log"
MAX_FILES = 2000


@dataclass(frozen=True)
class Artefact:
    name: str  # how the API names it: "job.log", or a path relative to the job's output directory
    path: Path
    size: int
    modified: float

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bytes": self.size, "modified": self.modified}


def _regular(path: Path) -> os.stat_result | None:
    """The file's status if it is a regular file and not a symlink (lstat: a link is never followed)."""
    try:
        info = path.lstat()
    except OSError:
        return None
    return info if stat.S_ISREG(info.st_mode) else None


def list_files(job_id: str, settings: dict[str, Any]) -> list[Artefact]:
    paths = job_paths(settings, job_id)
    found: list[Artefact] = []
    if (info := _regular(paths.log_path)) is not None:
        found.append(Artefact(LOG_NAME, paths.log_path, info.st_size, info.st_mtime))
    root = paths.output_dir
    if root.is_dir() and not root.is_symlink():
        for directory, subdirs, files in os.walk(root, followlinks=False):
            here = Path(directory)
            subdirs[:] = sorted(d for d in subdirs if not (here / d).is_symlink())
            for name in sorted(files):
                path = here / name
                if (info := _regular(path)) is not None:
                    found.append(Artefact(path.relative_to(root).as_posix(), path, info.st_size, info.st_mtime))
                if len(found) >= MAX_FILES:
                    return found
    return found


def find_file(job_id: str, name: str, settings: dict[str, Any]) -> Artefact:
    """The job's file called ``name`` in its own list; NotFound for anything else."""
    for artefact in list_files(job_id, settings):
        if artefact.name == name:
            return artefact
    raise NotFound(not_found_message(job_id, name))


def not_found_message(job_id: str, name: str) -> str:
    return f"job {job_id} has no file {name!r}; GET /api/v1/stress-tests/{job_id}/files lists them"


# --- retention -------------------------------------------------------------------------------------


def old_artefacts(settings: dict[str, Any], days: float) -> list[tuple[str, Path]]:
    """(job id, path) of the output folders and logs of jobs that finished more than ``days`` ago."""
    cutoff = utcnow() - timedelta(days=days)
    jobs = db.session.scalars(select(StressJob.id).where(StressJob.status.in_([s.value for s in FINISHED]),
                                                         StressJob.finished_at < cutoff)
                              .order_by(StressJob.finished_at)).all()
    found = []
    for job_id in jobs:
        paths = job_paths(settings, job_id)
        for path in (paths.output_dir, paths.log_path):
            if path.is_symlink():
                found.append((job_id, path))  # the link itself goes, never what it points at
            elif path.exists() and path.resolve().is_relative_to((paths.outputs_root if path == paths.output_dir
                                                                  else paths.logs_root).resolve()):
                found.append((job_id, path))
    return found


def remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.stress.artefacts",
                                     description="Remove the files of old stress jobs (their results stay).")
    sub = parser.add_subparsers(dest="command", required=True)
    cleanup = sub.add_parser("cleanup", help="remove the outputs and logs of jobs finished long ago")
    cleanup.add_argument("--days", type=float, default=None, help="older than this (default storage.cleanup_days)")
    cleanup.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    args = parser.parse_args(argv)

    from backend.app import create_app

    app = create_app()
    days = args.days if args.days is not None else float(app.config["PEP"]["storage"]["cleanup_days"])
    if days < 0:
        parser.error("--days must not be negative")
    with app.app_context():
        found = old_artefacts(app.config["PEP"]["stress"], days)
        verb = "would remove" if args.dry_run else "removing"
        for job_id, path in found:
            print(f"{verb} {path} (job {job_id})")
            if not args.dry_run:
                remove(path)
        print(f"{len(found)} path{'s' * (len(found) != 1)} of jobs finished more than {days:g} days ago"
              + (" (dry run: nothing removed)" if args.dry_run else " removed; their results are kept"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
