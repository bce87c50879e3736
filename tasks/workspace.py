"""The workspace: batch outputs between stages, as JSONL files named by run, stage, batch and attempt.

Records are encoded by `dataflare_portal.core.jsonl` (orjson where exact, else the standard library), the
encoding the JSONL sinks use too, so publish can copy workspace bytes into a JSONL sink unchanged.

A path is derived from (run, stage position, batch index, attempt), so two attempts of the same
batch never write the same file; which attempt is canonical is recorded in the database in the
batch's success transaction. Files are written to a temporary name and moved into place with
os.replace, so a reader never sees half a file.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from django.conf import settings

from dataflare_portal.core import jsonl

__all__ = [
    "batch_path",
    "global_dir",
    "read_jsonl",
    "resolve",
    "run_dir",
    "run_dir_remove",
    "scratch_dir",
    "write_jsonl",
    "Parts",
    "PartsWriter",
]


def root() -> Path:
    return Path(settings.WORKSPACE_DIR)


def run_dir(run_id) -> Path:
    return root() / "runs" / str(run_id)


def relative(path: Path) -> str:
    """The path as stored in the database: relative to the workspace root."""
    return str(Path(path).relative_to(root()))


def resolve(ref: str) -> Path:
    """The absolute path of a stored reference, refusing anything outside the workspace."""
    base = root().resolve()
    path = (base / ref).resolve()
    if base != path and base not in path.parents:
        raise ValueError(f"workspace reference escapes the workspace: {ref!r}")
    return path


def batch_path(run_id, position: int, index: int, attempt: int) -> Path:
    """runs/<run>/<stage position>/<batch index>.<attempt>.jsonl"""
    return run_dir(run_id) / str(position) / f"{index}.{attempt}.jsonl"


def scratch_dir(run_id, position: int, batch_id) -> Path:
    """runs/<run>/<stage position>/scratch/<batch id>/: a stage's durable notes about one batch, kept across attempts.

    Keyed by the batch id, not the attempt, so a redo finds what earlier attempts left (the model stage keeps
    its finished calls there). Not created here: a stage that uses it makes it. Removed with the run's folder.
    """
    return run_dir(run_id) / str(position) / "scratch" / str(batch_id)


def global_dir(run_id, position: int, attempt: int) -> Path:
    """A global stage's output: a folder of parts, moved into place as a whole."""
    return run_dir(run_id) / str(position) / f"g.{attempt}"


def write_jsonl(path: Path, records: Iterable[dict]) -> int:
    """Write records to path atomically (temp file + os.replace); returns the byte size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    data = jsonl.dumps_lines(records)
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
    return len(data)


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file, decoded in one parser call (files written by `json` before read the same)."""
    with open(path, "rb") as fh:
        return jsonl.loads_lines(fh.read())


# Parts.raw() hands out a file in blocks of about this many bytes (cut at a line end).
RAW_BLOCK_BYTES = 1024 * 1024


class Parts:
    """A stage's output files in order: iterated as decoded chunks, or read as raw JSONL bytes.

    The workspace encodes a record exactly as the JSONL sinks do (UTF-8, no ASCII escaping, compact
    separators, one record per line), so a consumer that only copies records — publish to a JSONL
    file — can take the bytes as they are instead of decoding and encoding every record again.
    `check` is called before each file and block (the caller's lease check); `records` counts what was handed out.
    """

    def __init__(self, refs: Iterable[str], check=None):
        self.refs = list(refs)
        self.check = check
        self.records = 0

    def __iter__(self) -> Iterator[list[dict]]:
        for ref in self.refs:
            if self.check is not None:
                self.check()
            chunk = read_jsonl(resolve(ref))
            self.records += len(chunk)
            yield chunk

    def raw(self, block_bytes: int | None = None) -> Iterator[tuple[bytes, int]]:
        """(bytes, record count) per block of whole lines; a JSON line holds no raw newline, so lines are records.

        A file is read in blocks of about `block_bytes` (RAW_BLOCK_BYTES), each extended to the end of its
        last line, so a consumer holds one block, not one file: the write batches of a partitioned stage are
        a fraction of the whole output each, and publish copies them (an empty file yields one empty block).
        """
        size = max(1, block_bytes or RAW_BLOCK_BYTES)
        for ref in self.refs:
            if self.check is not None:
                self.check()
            with open(resolve(ref), "rb") as fh:
                left = os.fstat(fh.fileno()).st_size
                first = True
                while True:
                    # Never ask for more than the file holds (read(n) allocates n bytes before it shrinks);
                    # workspace files are written once and replaced whole, so the size at open is the file's.
                    data = fh.read(min(size, left)) if left > 0 else b""
                    left -= len(data)
                    if not data:
                        if first:
                            yield b"", 0
                        break
                    if not first and self.check is not None:
                        self.check()
                    first = False
                    if not data.endswith(b"\n"):
                        tail = fh.readline()
                        left -= len(tail)
                        data += tail
                        if not data.endswith(b"\n"):
                            raise ValueError(f"workspace file does not end with a newline: {ref!r}")
                    n = data.count(b"\n")
                    self.records += n
                    yield data, n


def discard(path: Path) -> None:
    """Remove an attempt's output that will never be canonical (lease lost, failed)."""
    try:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def run_dir_remove(run_id) -> None:
    shutil.rmtree(run_dir(run_id), ignore_errors=True)


class PartsWriter:
    """Writes a global stage's output as parts of at most `part_size` records into a temp folder.

    commit() moves the folder into place (os.replace) and returns the part references, so the
    output of an attempt appears whole or not at all.
    """

    def __init__(self, final_dir: Path, part_size: int):
        self.final_dir = final_dir
        self.part_size = max(1, part_size)
        self.tmp_dir = final_dir.with_name(f".{final_dir.name}.{uuid.uuid4().hex[:8]}.tmp")
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.buffer: list[dict] = []
        self.parts = 0
        self.records = 0

    def write(self, records: list[dict]) -> None:
        self.buffer.extend(records)
        self.records += len(records)
        while len(self.buffer) >= self.part_size:
            self._flush(self.buffer[: self.part_size])
            self.buffer = self.buffer[self.part_size :]

    def _flush(self, chunk: list[dict]) -> None:
        write_jsonl(self.tmp_dir / f"{self.parts}.jsonl", chunk)
        self.parts += 1

    def commit(self) -> list[str]:
        if self.buffer:
            self._flush(self.buffer)
            self.buffer = []
        if self.final_dir.exists():
            shutil.rmtree(self.final_dir, ignore_errors=True)
        os.replace(self.tmp_dir, self.final_dir)
        return [relative(self.final_dir / f"{i}.jsonl") for i in range(self.parts)]

    def abort(self) -> None:
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
