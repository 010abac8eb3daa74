"""The ``file`` sink: records as NDJSON files, one stream per org and UTC day.

Configuration::

    [sinks.archive]
    type = "file"
    path = "/var/lib/cortex/events"   # default "{data_dir}/events"; relative to data_dir
    max_bytes = 104857600             # rotate a day's file at this size (default 100 MiB)
    fsync = true                      # flush and fsync every file touched per batch

Layout: ``{path}/{org}/{YYYY-MM-DD}.ndjson`` by the UTC day of ``received_at``, continued
in ``{YYYY-MM-DD}.1.ndjson``, ``.2`` ... when a file would pass ``max_bytes``; rejected
records go to ``{YYYY-MM-DD}.errors.ndjson`` (rotated the same way).  A line is the record
as the sink received it, without ``context``.

Exactly once in effect: each stream remembers the highest ``seq`` it holds and the ids
written with it (learned from the files' tails on first use, repairing a line torn by a
crash), and skips what a re-sent batch already delivered.  That relies on ``seq`` growing
in queue order, as the dispatcher guarantees.  One process at a time may write a
directory; the sink holds a lock on ``{path}/.lock`` while open.

Data subjects and retention (see :mod:`cortex_file.privacy`): a person's lines are removed
by rewriting each file that holds any of them (a new file renamed over the old one), and
retention removes whole day files older than the org's ``files`` retention.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping

import orjson

from cortex.options import refuse_unknown_options
from cortex.sinks import PermanentError, Sink, SinkContext
from cortex_file.layout import StreamKey, day_of, org_dirname, part_name, stream_parts
from cortex_file import privacy
from cortex_file.locking import DirectoryLock
from cortex_file.tail import TailState, repair_torn_tail, scan_tail

__all__ = ["FileSink"]

DEFAULT_MAX_BYTES = 100 * 1024 * 1024
_OPTIONS = frozenset({"path", "max_bytes", "fsync"})
_DUMPS_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


class _Stream:
    """The state of one stream: its newest part, that part's size, and its tail."""

    def __init__(self, part: int, size: int, tail: TailState):
        self.part = part
        self.size = size
        self.tail = tail


class FileSink(Sink):
    """Appends records to NDJSON files per org and UTC day, rotated by size."""

    type_name: ClassVar[str] = "file"
    description: ClassVar[str] = "NDJSON files per org and UTC day, rotated by size"
    idempotent: ClassVar[bool] = True

    def __init__(self, name: str, options: Mapping[str, Any], context: SinkContext):
        super().__init__(name, options, context)
        refuse_unknown_options(self.options, _OPTIONS, f"sink {name!r} (file): ")
        self.path = self._path_option(self.options.get("path"))
        self.max_bytes = self.options.get("max_bytes", DEFAULT_MAX_BYTES)
        max_bytes = self.max_bytes
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError(
                f"sink {name!r} (file): max_bytes must be a positive integer (bytes), "
                f"got {self.max_bytes!r}"
            )
        self.fsync = self.options.get("fsync", True)
        if not isinstance(self.fsync, bool):
            raise ValueError(
                f"sink {name!r} (file): fsync must be true or false, got {self.fsync!r}"
            )
        self.skipped = 0
        self._streams: dict[StreamKey, _Stream] = {}
        self._lock: DirectoryLock | None = None

    def _path_option(self, value: Any) -> Path:
        data_dir = Path(self.context.data_dir)
        if value is None:
            return data_dir / "events"
        if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
            raise ValueError(
                f"sink {self.name!r} (file): path must be a directory path, got {value!r}"
            )
        text = str(value).replace("{data_dir}", str(data_dir))
        path = Path(text).expanduser()
        return path if path.is_absolute() else data_dir / path

    # --- lifecycle ---

    def open(self) -> None:
        """Create the directory, lock it, repair torn lines and learn each org's latest tail."""
        if self._lock is not None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = DirectoryLock(self.path / ".lock")
        self._lock.acquire()
        self._streams.clear()
        try:
            for org_path in sorted(p for p in self.path.iterdir() if p.is_dir()):
                privacy.remove_unfinished_rewrites(org_path)
                latest: dict[bool, StreamKey] = {}
                for key in stream_parts(org_path):
                    if key.errors not in latest or key.day > latest[key.errors].day:
                        latest[key.errors] = key
                for key in latest.values():
                    self._stream(key)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Forget the streams and release the directory lock (safe to call twice)."""
        self._streams.clear()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def describe(self) -> dict[str, Any]:
        """Name, type, directory, rotation size, fsync and duplicates skipped so far."""
        return {
            "name": self.name,
            "type": self.type_name,
            "path": str(self.path),
            "max_bytes": self.max_bytes,
            "fsync": self.fsync,
            "open": self._lock is not None,
            "skipped_duplicates": self.skipped,
        }

    # --- writing ---

    def write(self, records: list[dict[str, Any]]) -> None:
        """Append the records not yet in their stream; durable (with ``fsync``) on return."""
        if not records:
            return
        if self._lock is None:
            raise RuntimeError(f"file sink {self.name!r} is not open")
        pending: dict[StreamKey, list[bytes]] = {}
        try:
            for record in records:
                key = self._key(record)
                stream = self._stream(key)
                seq, record_id = record.get("seq"), record.get("id")
                if stream.tail.holds(seq, record_id):
                    self.skipped += 1
                    continue
                line = self._line(record)
                stream.tail.add(seq, record_id)
                pending.setdefault(key, []).append(line)
            for key, lines in pending.items():
                self._append(key, lines)
        except BaseException:
            # What is on disk is unknown now: learn it again (and repair it) before the retry.
            for key in pending:
                self._streams.pop(key, None)
            raise

    def _key(self, record: dict[str, Any]) -> StreamKey:
        org = record.get("org")
        if org is None or org == "":
            raise PermanentError(f"record {record.get('id')!r} has no org")
        day = day_of(record.get("received_at"))
        if day is None:
            raise PermanentError(
                f"record {record.get('id')!r} has no valid received_at: "
                f"{record.get('received_at')!r}"
            )
        return StreamKey(org_dirname(org), day, record.get("kind") == "rejected")

    @staticmethod
    def _line(record: dict[str, Any]) -> bytes:
        stored = {key: value for key, value in record.items() if key != "context"}
        try:
            return orjson.dumps(stored, default=_json_default, option=_DUMPS_OPTIONS)
        except orjson.JSONEncodeError as error:
            raise PermanentError(
                f"record {record.get('id')!r} is not JSON-serialisable: {error}"
            ) from error

    def _stream(self, key: StreamKey) -> _Stream:
        """The state of ``key``, read from its files (repairing a torn tail) on first use."""
        stream = self._streams.get(key)
        if stream is not None:
            return stream
        org_path = self.path / key.org_dir
        parts = stream_parts(org_path).get(key, [0])
        paths = [org_path / part_name(key, part) for part in parts]
        newest = paths[-1]
        if newest.exists():
            repair_torn_tail(newest, fsync=self.fsync, logger=self.context.logger)
        existing = [path for path in paths if path.exists()]
        tail = scan_tail(existing, logger=self.context.logger)
        size = newest.stat().st_size if newest.exists() else 0
        stream = self._streams[key] = _Stream(parts[-1], size, tail)
        return stream

    def _append(self, key: StreamKey, lines: list[bytes]) -> None:
        """Append ``lines`` to the stream, moving to a new part when one would pass max_bytes."""
        stream = self._streams[key]
        org_path = self.path / key.org_dir
        if not org_path.exists():
            org_path.mkdir(parents=True, exist_ok=True)
            self._sync_dir(self.path)
        chunk: list[bytes] = []
        for line in lines:
            if stream.size and stream.size + len(line) > self.max_bytes:
                self._write_part(org_path / part_name(key, stream.part), chunk)
                chunk = []
                stream.part += 1
                stream.size = 0
            chunk.append(line)
            stream.size += len(line)
        self._write_part(org_path / part_name(key, stream.part), chunk)

    def _write_part(self, path: Path, chunk: list[bytes]) -> None:
        if not chunk:
            return
        created = not path.exists()
        with open(path, "ab") as handle:
            handle.write(b"".join(chunk))
            handle.flush()
            if self.fsync:
                os.fsync(handle.fileno())
        if created:
            self._sync_dir(path.parent)

    def _sync_dir(self, directory: Path) -> None:
        """fsync a directory so that a file or directory created in it survives a power cut."""
        if not self.fsync or os.name != "posix":
            return
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    # --- data subjects and retention ---

    def open_for_export(self) -> None:
        """Nothing to prepare: exporting only reads files, which needs no lock."""

    def export_subject(self, subject) -> Iterator[dict[str, Any]]:
        """Every line of the subject in the org's files, oldest file first."""
        return privacy.export_lines(self.path / org_dirname(subject.org), subject, self.context.logger)

    def delete_subject(self, subject) -> int:
        """Rewrite every file of the org that holds lines of the subject without them.

        Runs with the directory lock held (by this open sink).  The streams' remembered
        tails are kept as they are: they say which records were delivered, and a record
        deleted here must not be written again when a batch is re-sent.
        """
        self._require_open()
        removed = privacy.remove_lines(self.path / org_dirname(subject.org), subject, fsync=self.fsync)
        self._refresh_sizes()
        return removed

    def expire(self, policy, limit: int) -> int:
        """Remove at most ``limit`` whole day files older than the org's ``files`` retention."""
        self._require_open()
        removed = privacy.remove_old_files(self.path, policy, limit, fsync=self.fsync)
        # a stream whose files went is learnt again from the disk when next written to
        gone = [key for key, stream in self._streams.items()
                if not (self.path / key.org_dir / part_name(key, stream.part)).exists()]
        for key in gone:
            del self._streams[key]
        return removed

    def _require_open(self) -> None:
        if self._lock is None:
            raise RuntimeError(f"file sink {self.name!r} is not open")

    def _refresh_sizes(self) -> None:
        for key, stream in self._streams.items():
            newest = self.path / key.org_dir / part_name(key, stream.part)
            stream.size = newest.stat().st_size if newest.exists() else 0
