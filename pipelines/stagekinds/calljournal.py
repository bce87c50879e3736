"""Per-batch journal of model calls, so a redo of a batch repeats only the calls that did not finish.

The engine redoes a whole batch after a failure, a crash (SIGKILL, OOM) or a lost lease. Calls that had
already come back are kept here, in the batch's scratch folder (`StageContext.scratch`, the same on every
attempt): one append-only file per attempt, `calls.<attempt>.jsonl`, so no two processes ever write one
file (a worker that lost its lease may still be writing its own). Every line is written with one
`write()` and flushed as the call finishes, so it survives a SIGKILL of the worker (the page cache is the
kernel's); a machine crash may lose the last lines, which only means those calls are made again. A torn
last line is skipped. Lines:

- `{"t": "start", "k": [keys]}` before a call is sent;
- `{"t": "done", "k": [keys], "o": [outputs], "q": {i: [code, reason]}, "pt", "ct", "m", "v", "r", "s"}`
  when it came back (outputs and quarantine per record, tokens, model, whether it was a retry, stats);
- `{"t": "reported", "a": [attempts]}` when this attempt handed its usage (and that of the earlier
  attempts' unreported calls it inherited) to the engine with its failure, so later attempts do not
  count those calls' tokens again.

A record's key hashes the model endpoint, the request parameters and the text sent: same record, same
model config and prompt → same key; change any of them and nothing is reused.

Token accounting (docs/engine.md "Model calls are not repeated"): a call counts once, in the usage of the
first attempt that reports usage after it (its own failure, or the commit of whichever attempt uses it).
A call whose records an earlier attempt had sent without an answer coming back (in flight when the worker
died, or failed) is a *retry*: its tokens are also counted as retry cost.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["CallJournal", "JournalEntry", "call_fingerprint"]

_FILE = re.compile(r"^calls\.(\d+)\.jsonl$")
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


def call_fingerprint(endpoint, parameters: dict) -> str:
    """What decides a model's answer besides the text: endpoint and model, input name, request parameters."""
    spec = [endpoint.key, endpoint.input_name, dict(endpoint.parameters or {}), dict(parameters or {})]
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class JournalEntry:
    """A finished call read back from an attempt's file."""

    attempt: int
    keys: list[str]
    outputs: list[dict | None]
    quarantined: dict[int, tuple[str, str]]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_name: str = ""
    model_version: str = ""
    retry: bool = False
    stats: dict = field(default_factory=dict)


def stats_dump(stats) -> dict:
    """A CallStats as JSON (what usage rows need: attempts per status code, their records and latencies)."""
    if stats is None:
        return {}
    return {
        "calls": stats.calls,
        "attempts": stats.attempts,
        "codes": dict(stats.status_counts),
        "records": dict(stats.records_by_code),
        "latencies": {k: list(v) for k, v in stats.latencies_by_code.items()},
    }


def stats_load(data: dict):
    """The CallStats of a stats_dump()."""
    from collections import Counter

    from modelclient import CallStats

    stats = CallStats()
    stats.calls = int(data.get("calls") or 0)
    stats.attempts = int(data.get("attempts") or 0)
    stats.status_counts = Counter({k: int(v) for k, v in (data.get("codes") or {}).items()})
    stats.records_by_code = Counter({k: int(v) for k, v in (data.get("records") or {}).items()})
    stats.latencies_by_code = {k: [float(x) for x in v] for k, v in (data.get("latencies") or {}).items()}
    stats.latencies_s = [x for v in stats.latencies_by_code.values() for x in v]
    return stats


class CallJournal:
    """The calls of one batch across its attempts; `folder` None (no scratch) turns it into a no-op."""

    def __init__(self, folder: Path | None, attempt: int, fingerprint: str):
        self.folder = Path(folder) if folder is not None else None
        self.attempt = int(attempt)
        self.fingerprint = fingerprint.encode()
        self.results: dict[str, tuple[dict | None, tuple[str, str] | None]] = {}
        # Keys another attempt sent without an answer coming back: calling them again is a retry.
        self.unanswered: set[str] = set()
        # Finished calls of other attempts whose tokens no attempt has reported yet.
        self.unreported: list[JournalEntry] = []
        self._lock = threading.Lock()
        self._fh = None
        if self.folder is not None:
            self._load()

    def key(self, text: str) -> str:
        return hashlib.sha256(self.fingerprint + b"\0" + text.encode("utf-8", "surrogatepass")).hexdigest()[:32]

    # -- reading what earlier attempts left
    def _load(self) -> None:
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return
        started: set[str] = set()
        reported: set[int] = set()
        entries: list[JournalEntry] = []
        for name in sorted(names):
            m = _FILE.match(name)
            if not m or int(m.group(1)) == self.attempt:
                continue
            entries += self._read(self.folder / name, int(m.group(1)), started, reported)
        self.unreported = [e for e in entries if e.attempt not in reported]
        self.unanswered = started - set(self.results)

    def _read(self, path: Path, attempt: int, started: set[str], reported: set[int]) -> list[JournalEntry]:
        entries: list[JournalEntry] = []
        with open(path, "rb") as fh:
            for raw in fh:
                try:
                    line = json.loads(raw)
                except ValueError:  # the torn last line of a killed attempt
                    continue
                kind = line.get("t")
                if kind == "start":
                    started.update(line.get("k") or [])
                elif kind == "reported":
                    reported.update(int(a) for a in line.get("a") or [attempt])
                elif kind == "done":
                    entry = JournalEntry(
                        attempt=attempt,
                        keys=list(line["k"]),
                        outputs=list(line["o"]),
                        quarantined={int(i): (c, r) for i, (c, r) in (line.get("q") or {}).items()},
                        prompt_tokens=int(line.get("pt") or 0),
                        completion_tokens=int(line.get("ct") or 0),
                        model_name=line.get("m") or "",
                        model_version=line.get("v") or "",
                        retry=bool(line.get("r")),
                        stats=line.get("s") or {},
                    )
                    entries.append(entry)
                    for i, key in enumerate(entry.keys):
                        if i in entry.quarantined:
                            self.results[key] = (None, entry.quarantined[i])
                        elif entry.outputs[i] is not None:
                            self.results[key] = (entry.outputs[i], None)
        return entries

    # -- writing this attempt's calls
    def _write(self, line: dict) -> None:
        if self.folder is None:
            return
        data = _dumps(line) + "\n"
        with self._lock:
            if self._fh is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                # Unbuffered: each line is one write(), in the kernel's hands when it returns.
                self._fh = open(self.folder / f"calls.{self.attempt}.jsonl", "ab", buffering=0)  # noqa: SIM115
            self._fh.write(data.encode("utf-8", "surrogatepass"))

    def start(self, keys: list[str]) -> None:
        """A call is about to be sent."""
        self._write({"t": "start", "k": keys})

    def done(self, keys: list[str], call, quarantined: dict[int, tuple[str, str]]) -> None:
        """A call came back: its outputs, and its quarantined records by index within the call."""
        self._write(
            {
                "t": "done",
                "k": keys,
                "o": call.outputs,
                "q": {str(i): list(v) for i, v in quarantined.items()},
                "pt": call.prompt_tokens,
                "ct": call.completion_tokens,
                "m": call.model_name,
                "v": call.model_version,
                "r": call.retry,
                "s": stats_dump(call.stats),
            }
        )

    def reported(self) -> None:
        """This attempt's usage, with that of the unreported calls it inherited, went to the engine with its failure."""
        self._write({"t": "reported", "a": sorted({self.attempt, *(e.attempt for e in self.unreported)})})

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
