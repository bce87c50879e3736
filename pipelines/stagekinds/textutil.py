"""Text helpers shared by the filter, clean and dedup kinds: language by script, HTML to text, PII masks."""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from html.parser import HTMLParser

# ---- Language by script (no models, no downloads) ---------------------------------------------
_HAN_RE = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df]")
_KANA_RE = re.compile("[\u3040-\u30ff\u31f0-\u31ff]")
_HANGUL_RE = re.compile("[\uac00-\ud7af\u1100-\u11ff]")
_LATIN_RE = re.compile("[A-Za-z\u00c0-\u024f]")
_LETTER_RE = re.compile(r"[^\W\d_]")


def script_counts(text: str) -> dict[str, int]:
    """Letters per script: han, kana, hangul, latin, other (regex counts run in C, not a Python loop)."""
    latin = len(_LATIN_RE.findall(text))
    if text.isascii():
        return {"han": 0, "kana": 0, "hangul": 0, "latin": latin, "other": 0}
    han = len(_HAN_RE.findall(text))
    kana = len(_KANA_RE.findall(text))
    hangul = len(_HANGUL_RE.findall(text))
    letters = len(_LETTER_RE.findall(text))
    return {
        "han": han,
        "kana": kana,
        "hangul": hangul,
        "latin": latin,
        "other": max(0, letters - han - kana - hangul - latin),
    }


def detect_language(text: str, *, sample_chars: int = 2000) -> str:
    """'zh', 'en' or 'other' from the scripts of the first `sample_chars` characters.

    Han characters carry a word each while Latin letters carry a fraction of one, so 30% Han
    letters already means Chinese prose with some English terms in it.
    """
    counts = script_counts(text[:sample_chars])
    letters = sum(counts.values())
    if letters == 0:
        return "other"
    if counts["kana"] / letters > 0.05 or counts["hangul"] / letters > 0.05:
        return "other"  # Japanese and Korean use Han characters too
    if counts["han"] / letters >= 0.3:
        return "zh"
    if counts["latin"] / letters >= 0.7:
        return "en"
    return "other"


# ---- Whitespace and unicode -------------------------------------------------------------------
# Zero-width and control characters (tab, newline and carriage return are whitespace, handled below).
_INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def normalize_whitespace(text: str, *, keep_newlines: bool = True) -> str:
    """Drop zero-width and control characters, collapse runs of spaces, trim; keeps paragraph breaks."""
    if not text.isprintable():  # one C-level check; most records skip the regex below
        text = _INVISIBLE.sub("", text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not keep_newlines or "\n" not in text:
        return " ".join(text.split())
    text = "\n".join(" ".join(line.split()) for line in text.split("\n"))
    return _MANY_NEWLINES.sub("\n\n", text).strip()


def normalize_unicode(text: str, form: str = "NFKC") -> str:
    return unicodedata.normalize(form, text)


# ---- HTML to text -----------------------------------------------------------------------------
_BLOCK_TAGS = frozenset(
    [
        "p",
        "div",
        "br",
        "li",
        "ul",
        "ol",
        "tr",
        "table",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "section",
        "article",
        "header",
        "footer",
        "blockquote",
        "pre",
        "hr",
    ]
)
_DROP_TAGS = frozenset(("script", "style", "noscript", "template", "head"))


class _TextExtractor(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in _DROP_TAGS:
            self._skip += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_startendtag(self, tag, attrs):
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in _DROP_TAGS:
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


_MAYBE_HTML = re.compile(r"<[A-Za-z/!]|&[#A-Za-z0-9]+;")


def strip_html(text: str) -> str:
    """Visible text of an HTML fragment (script/style dropped, entities decoded, blocks as newlines)."""
    if not _MAYBE_HTML.search(text):
        return text
    parser = _TextExtractor()
    parser.feed(text)
    parser.close()
    return normalize_whitespace("".join(parser.parts))


# ---- PII masking ------------------------------------------------------------------------------
PII_PATTERNS: dict[str, re.Pattern] = {
    "email": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    # Mainland resident ID: 6-digit area, birth date, 3-digit sequence, check digit (or X).
    "id_card": re.compile(
        r"(?<![0-9A-Za-z])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?![0-9A-Za-z])"
    ),
    "ip": re.compile(
        r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.])"
        r"|(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])"
    ),
    # Chinese mobile (+86 optional) first, then general international/landline forms.
    "phone": re.compile(
        r"(?<![\d+])(?:\+?86[- ]?)?1[3-9]\d[- ]?\d{4}[- ]?\d{4}(?!\d)"
        r"|(?<![\w+])(?:\+\d{1,3}[- .]?)?(?:\(\d{1,4}\)[- .]?)?\d{2,4}[- .]\d{3,4}[- .]?\d{3,4}(?!\d)"
    ),
}
PII_ORDER = ("email", "id_card", "ip", "phone")
_DIGIT_RUN = re.compile(r"\d{2}|[0-9A-Fa-f]:|:[0-9A-Fa-f]")


def _valid_ip(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


def mask_pii(text: str, types=PII_ORDER, replacement: str = "[{type}]") -> tuple[str, int]:
    """Replace personal data with a placeholder; returns the text and how many values were masked."""
    total = 0
    has_digits = _DIGIT_RUN.search(text) is not None
    for kind in PII_ORDER:
        if kind not in types:
            continue
        # Cheap pre-checks skip the costly patterns on the many records that cannot match them.
        if (kind == "email" and "@" not in text) or (kind != "email" and not has_digits):
            continue
        if kind == "ip" and "." not in text and ":" not in text:
            continue
        token = replacement.replace("{type}", kind.upper())

        def sub(match, token=token, kind=kind):
            nonlocal total
            value = match.group(0)
            if kind == "ip" and ":" in value and not _valid_ip(value):
                return value
            total += 1
            return token

        text = PII_PATTERNS[kind].sub(sub, text)
    return text, total
