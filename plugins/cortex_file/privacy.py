"""The file sink's data-subject requests and retention, on its directory of NDJSON files.

Deleting a person's lines rewrites each file that holds any: the other lines are copied to
``<file>.rewrite`` (which no stream's name matches), fsynced, and renamed over the file, so
that a crash leaves either the old file or the new one, never half of one.  Lines are
matched by :meth:`cortex.subjects.Subject.matches` after a quick byte search for the
person's identifiers.  Retention removes whole day files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterator

import orjson

from cortex.subjects import Subject
from cortex_file.layout import org_dirname, part_name, stream_parts

__all__ = ["export_lines", "remove_lines", "remove_old_files", "remove_unfinished_rewrites"]

REWRITE_SUFFIX = ".rewrite"


def _stream_files(org_path: Path) -> list[Path]:
    """Every file of every stream in an org's directory, by day, events before errors, parts in order."""
    files = []
    for key, parts in sorted(stream_parts(org_path).items(), key=lambda item: (item[0].day, item[0].errors)):
        files.extend(org_path / part_name(key, part) for part in parts)
    return files


def _needles(subject: Subject) -> list[bytes]:
    needles = set()
    for value in subject.values():
        needles.add(value.encode("utf-8"))
        needles.add(orjson.dumps(value)[1:-1])  # as it appears inside a JSON string
    return sorted(needles)


def _belongs(line: bytes, subject: Subject, needles: list[bytes]) -> bool:
    if not any(needle in line for needle in needles):
        return False
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(record, dict) and subject.matches(record)


def export_lines(org_path: Path, subject: Subject, logger: logging.Logger) -> Iterator[dict[str, Any]]:
    """The subject's records in an org's files (a torn last line is skipped)."""
    needles = _needles(subject)
    for path in _stream_files(org_path):
        try:
            handle = open(path, "rb")
        except FileNotFoundError:  # removed by retention meanwhile
            continue
        with handle:
            for line in handle:
                if line.endswith(b"\n") and _belongs(line, subject, needles):
                    yield orjson.loads(line)


def _sync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def remove_lines(org_path: Path, subject: Subject, *, fsync: bool) -> int:
    """Rewrite the org's files without the subject's lines; returns how many lines went.

    The caller holds the directory lock, so no line is appended meanwhile.
    """
    needles = _needles(subject)
    removed = 0
    for path in _stream_files(org_path):
        with open(path, "rb") as handle:
            if not any(_belongs(line, subject, needles) for line in handle):
                continue
        rewrite = path.with_name(path.name + REWRITE_SUFFIX)
        with open(path, "rb") as source, open(rewrite, "wb") as target:
            for line in source:
                if _belongs(line, subject, needles):
                    removed += 1
                else:
                    target.write(line)
            target.flush()
            if fsync:
                os.fsync(target.fileno())
        os.replace(rewrite, path)
        if fsync:
            _sync_dir(org_path)
    return removed


def remove_old_files(root: Path, policy: Any, limit: int, *, fsync: bool) -> int:
    """Remove at most ``limit`` day files whose whole day is before the org's ``files`` cutoff."""
    by_dirname = {org_dirname(org): org for org in policy.orgs}
    removed = 0
    if not root.is_dir():
        return 0
    for org_path in sorted(p for p in root.iterdir() if p.is_dir()):
        org = by_dirname.get(org_path.name, org_path.name)
        cutoff = policy.cutoff(org, "files")
        if cutoff is None:
            continue
        # a day's file holds records received during that UTC day: all are older than the
        # cutoff when the day ends before the cutoff's day begins
        first_kept_day = cutoff.strftime("%Y-%m-%d")
        touched = False
        for key, parts in sorted(stream_parts(org_path).items(), key=lambda item: item[0].day):
            if key.day >= first_kept_day:
                continue
            for part in parts:
                (org_path / part_name(key, part)).unlink(missing_ok=True)
                removed += 1
                touched = True
                if removed >= limit:
                    break
            if removed >= limit:
                break
        if touched and fsync:
            _sync_dir(org_path)
        if removed >= limit:
            break
    return removed


def remove_unfinished_rewrites(org_path: Path) -> int:
    """Remove the ``.rewrite`` files a crash during a deletion left (the old files stand)."""
    removed = 0
    for path in org_path.glob("*.ndjson" + REWRITE_SUFFIX):
        path.unlink(missing_ok=True)
        removed += 1
    return removed
