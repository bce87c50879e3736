"""Fill locale/zh_Hans/LC_MESSAGES/django.po from the committed translations in locale/zh_Hans_terms.py.

Run by scripts/i18n between makemessages and compilemessages. The dict is the source of truth:
an msgid found there gets its translation (and loses a 'fuzzy' flag); an msgid missing there
keeps a non-fuzzy translation already in the .po. Placeholders (%(name)s, %s, {name}) must
survive translation; a mismatch is reported and the entry left untranslated. Prints every
msgid that is still untranslated, and exits 1 with --strict when there is any.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PO = HERE / "zh_Hans" / "LC_MESSAGES" / "django.po"
TERMS = HERE / "zh_Hans_terms.py"
PLACEHOLDER = re.compile(r"%\([a-zA-Z0-9_]+\)[-#0 +]?\d*(?:\.\d+)?[sdifr]|%[sdifr]|\{[a-zA-Z0-9_]*\}")
HEADER_FIXES = {
    "Project-Id-Version": "DataFlare Portal",
    "Last-Translator": "DataFlare Portal <i18n@dataflare.example>",
    "PO-Revision-Date": "2026-11-22 00:00+0000",
    "Language": "zh_Hans",
    "Plural-Forms": "nplurals=1; plural=0;",
    "Language-Team": "DataFlare Portal <i18n@dataflare.example>",
}


# ---- a small PO reader/writer (the subset makemessages produces) ------------------------------
def _unquote(text: str) -> str:
    body = text[1:-1]
    out, i = [], 0
    escapes = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "r": "\r"}
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            out.append(escapes.get(body[i + 1], body[i + 1]))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t").replace("\n", "\\n") + '"'


class Entry:
    """One PO entry: comments, flags, optional context, msgid, optional plural, translations."""

    def __init__(self):
        self.comments: list[str] = []
        self.flags: list[str] = []
        self.msgctxt: str | None = None
        self.msgid = ""
        self.msgid_plural: str | None = None
        self.msgstr: dict[int, str] = {}  # index -> text; index -1 for a singular msgstr
        self.obsolete = False

    @property
    def key(self) -> str:
        return f"{self.msgctxt}\x04{self.msgid}" if self.msgctxt is not None else self.msgid

    def translated(self) -> bool:
        return bool(self.msgstr) and all(self.msgstr.values()) and "fuzzy" not in self.flags

    def render(self) -> str:
        if self.obsolete:  # kept verbatim: "#~" lines only
            return "\n".join(self.comments)
        # PO order: comments and references, then flags, then the previous msgid (#|) of a fuzzy entry.
        lines = [c for c in self.comments if not c.startswith("#|")]
        if self.flags:
            lines.append("#, " + ", ".join(self.flags))
        if "fuzzy" in self.flags:
            lines.extend(c for c in self.comments if c.startswith("#|"))
        if self.msgctxt is not None:
            lines.append("msgctxt " + _quote(self.msgctxt))
        lines.extend(_field("msgid", self.msgid))
        if self.msgid_plural is not None:
            lines.extend(_field("msgid_plural", self.msgid_plural))
            for index in sorted(i for i in self.msgstr if i >= 0) or [0]:
                lines.extend(_field(f"msgstr[{index}]", self.msgstr.get(index, "")))
        else:
            lines.extend(_field("msgstr", self.msgstr.get(-1, "")))
        return "\n".join(lines)


def _field(name: str, text: str) -> list[str]:
    if "\n" in text[:-1]:
        parts = re.findall(r"[^\n]*\n|[^\n]+$", text)
        return [f'{name} ""'] + [_quote(p) for p in parts]
    return [f"{name} {_quote(text)}"]


def parse(text: str) -> list[Entry]:
    entries, current, field = [], Entry(), None
    started = False

    def flush():
        nonlocal current, started, field
        if started:
            entries.append(current)
        current, started, field = Entry(), False, None

    for raw in text.splitlines():
        line = raw.rstrip("\n")
        if not line.strip():
            flush()
            continue
        if line.startswith("#~"):
            current.obsolete = True
            current.comments.append(line)
            started = True
            continue
        if line.startswith("#,"):
            current.flags = [f.strip() for f in line[2:].split(",") if f.strip()]
            started = True
            continue
        if line.startswith("#"):
            if started and field is not None:
                flush()
            current.comments.append(line)
            started = True
            continue
        started = True
        match = re.match(r'^(msgctxt|msgid_plural|msgid|msgstr(?:\[(\d+)\])?)\s+(".*")$', line)
        if match:
            name, index, value = match.group(1), match.group(2), _unquote(match.group(3))
            if name == "msgctxt":
                current.msgctxt, field = value, ("ctxt", None)
            elif name == "msgid":
                current.msgid, field = value, ("id", None)
            elif name == "msgid_plural":
                current.msgid_plural, field = value, ("plural", None)
            else:
                idx = int(index) if index is not None else -1
                current.msgstr[idx] = value
                field = ("str", idx)
        elif line.startswith('"') and field is not None:
            value = _unquote(line)
            kind, idx = field
            if kind == "ctxt":
                current.msgctxt += value
            elif kind == "id":
                current.msgid += value
            elif kind == "plural":
                current.msgid_plural += value
            else:
                current.msgstr[idx] += value
    flush()
    return entries


def render(entries: list[Entry]) -> str:
    return "\n\n".join(e.render() for e in entries) + "\n"


# ---- filling ------------------------------------------------------------------------------------
def load_terms() -> dict[str, str]:
    spec = importlib.util.spec_from_file_location("zh_Hans_terms", TERMS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TRANSLATIONS


def placeholders(text: str) -> list[str]:
    return sorted(PLACEHOLDER.findall(text))


def fill(entries: list[Entry], terms: dict[str, str]) -> tuple[list[str], list[str]]:
    missing, mismatched = [], []
    for entry in entries:
        if entry.obsolete:
            continue
        if entry.msgid == "" and entry.msgctxt is None:  # the header
            lines = entry.msgstr.get(-1, "").split("\n")
            for name, value in HEADER_FIXES.items():
                at = next((i for i, line in enumerate(lines) if line.startswith(name + ":")), None)
                if at is None:
                    lines.insert(max(0, len(lines) - 1), f"{name}: {value}")
                else:
                    lines[at] = f"{name}: {value}"
            header = "\n".join(lines)
            entry.msgstr[-1] = header if header.endswith("\n") else header + "\n"
            if "fuzzy" in entry.flags:
                entry.flags.remove("fuzzy")
            continue
        text = terms.get(entry.key)
        if text is None and entry.msgctxt is not None:
            text = terms.get(entry.msgid)
        if text is not None:
            expected = placeholders(entry.msgid)
            if entry.msgid_plural is not None:
                # One Chinese form serves singular and plural: it may use either set of placeholders.
                allowed = set(expected) | set(placeholders(entry.msgid_plural))
                ok = set(placeholders(text)) <= allowed
            else:
                ok = placeholders(text) == expected
            if not ok:
                mismatched.append(entry.msgid)
            else:
                entry.msgstr = {0: text} if entry.msgid_plural is not None else {-1: text}
                entry.flags = [f for f in entry.flags if f != "fuzzy"]
        if not entry.translated():
            missing.append(entry.key.replace("\x04", " | "))
    return missing, mismatched


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strict", action="store_true", help="exit 1 when any msgid is untranslated")
    parser.add_argument("--list", action="store_true", help="print the untranslated msgids only, one per line")
    args = parser.parse_args()
    entries = parse(PO.read_text(encoding="utf-8"))
    missing, mismatched = fill(entries, load_terms())
    PO.write_text(render(entries), encoding="utf-8")
    if args.list:
        for msgid in missing:
            print(msgid.replace("\n", "\\n"))
        return 0
    total = sum(1 for e in entries if not e.obsolete and e.msgid)
    print(f"zh_Hans: {total - len(missing)}/{total} translated, {len(missing)} untranslated")
    for msgid in mismatched:
        print(f"  placeholder mismatch, left untranslated: {msgid!r}")
    for msgid in missing:
        print(f"  untranslated: {msgid!r}")
    return 1 if args.strict and missing else 0


if __name__ == "__main__":
    sys.exit(main())
