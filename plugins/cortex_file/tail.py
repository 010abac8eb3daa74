"""Reading a stream's files from the end: torn-line repair and the last ``seq`` written.

A crash can leave the last line of the file being appended to without its newline (or,
after a power cut, followed by zero bytes); :func:`repair_torn_tail` cuts such a tail off.
:func:`scan_tail` then reads lines backwards, newest part first, only as far as it needs to
find the highest ``seq`` and every id written with it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import orjson

__all__ = ["TailState", "lines_reversed", "repair_torn_tail", "scan_tail"]

_BLOCK = 64 * 1024


@dataclass
class TailState:
    """The highest ``seq`` in a stream and the ids written with it (None: no seq yet)."""

    max_seq: int | None = None
    ids: set[str] = field(default_factory=set)

    def holds(self, seq: object, record_id: object) -> bool:
        """True when a record with this ``seq`` and id must already be in the stream.

        Batches arrive in queue order, so anything below the highest ``seq`` was written
        before it; at the highest ``seq`` only the ids seen there were.  Records without an
        integer ``seq`` are never taken as written.
        """
        if self.max_seq is None or not isinstance(seq, int) or isinstance(seq, bool):
            return False
        return seq < self.max_seq or (seq == self.max_seq and record_id in self.ids)

    def add(self, seq: object, record_id: object) -> None:
        """Note that a record with this ``seq`` and id has been (or is being) written."""
        if not isinstance(seq, int) or isinstance(seq, bool):
            return
        if self.max_seq is None or seq > self.max_seq:
            self.max_seq, self.ids = seq, set()
        if seq == self.max_seq:
            self.ids.add(str(record_id))


def repair_torn_tail(path: Path, *, fsync: bool, logger: logging.Logger) -> int:
    """Truncate ``path`` after its last newline; return the number of bytes cut off.

    Trailing zero bytes (what some file systems leave after a power cut) count as torn.
    """
    with open(path, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - _BLOCK)
            handle.seek(start)
            block = handle.read(end - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        if end == size:
            return 0
        handle.truncate(end)
        if fsync:
            handle.flush()
            os.fsync(handle.fileno())
    logger.warning("file sink: cut a torn line of %d bytes off the end of %s", size - end, path)
    return size - end


def lines_reversed(path: Path) -> Iterator[bytes]:
    """The non-empty lines of ``path``, last first, read in blocks from the end."""
    with open(path, "rb") as handle:
        position = handle.seek(0, os.SEEK_END)
        rest = b""
        while position > 0:
            step = min(_BLOCK, position)
            position -= step
            handle.seek(position)
            pieces = (handle.read(step) + rest).split(b"\n")
            rest = pieces[0]
            for line in reversed(pieces[1:]):
                if line:
                    yield line
        if rest:
            yield rest


def scan_tail(paths: list[Path], *, logger: logging.Logger) -> TailState:
    """The :class:`TailState` of a stream whose parts are ``paths`` (oldest first).

    Reads backwards until it meets a ``seq`` below the highest, crossing into older parts
    when the newest ones hold nothing else (a queue entry can straddle a rotation).
    """
    state = TailState()
    for path in reversed(paths):
        for line in lines_reversed(path):
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                logger.warning("file sink: skipping a line that is not JSON in %s", path)
                continue
            seq = record.get("seq") if isinstance(record, dict) else None
            if not isinstance(seq, int) or isinstance(seq, bool):
                continue
            if state.max_seq is not None and seq < state.max_seq:
                return state
            state.add(seq, record.get("id"))
    return state
