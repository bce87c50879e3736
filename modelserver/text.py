"""Text primitives shared by the built-in models: tokenizer, stop words, sentence split."""

from __future__ import annotations

import re
from collections import Counter

__all__ = [
    "CJK_RANGES",
    "STOP_WORDS_EN",
    "STOP_WORDS_ZH",
    "count_tokens",
    "is_cjk",
    "split_sentences",
    "tokenize",
    "words",
]

# Han, kana and Hangul: scripts written without spaces, so one character is one token
# (as byte-level BPE tokenizers roughly do for common CJK characters).
CJK_RANGES = (
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3400-\u4dbf"  # CJK Extension A
    "\u4e00-\u9fff"  # CJK Unified Ideographs
    "\uac00-\ud7af"  # Hangul syllables
    "\uf900-\ufaff"  # CJK Compatibility Ideographs
)
_CJK_CHAR = f"[{CJK_RANGES}]"
# Letters (any script except CJK) with inner apostrophes or hyphens; digit runs; any single
# other visible character. Order matters: CJK first so a CJK run is never swallowed as a word.
_TOKEN_RE = re.compile(
    rf"{_CJK_CHAR}"
    rf"|[^\W\d_{CJK_RANGES}]+(?:['’\-][^\W\d_{CJK_RANGES}]+)*"
    r"|\d+"
    r"|[^\w\s]|_",
)
_WORD_RE = re.compile(rf"{_CJK_CHAR}|[^\W\d_{CJK_RANGES}]+(?:['’\-][^\W\d_{CJK_RANGES}]+)*")
_CJK_RE = re.compile(_CJK_CHAR)
_SENTENCE_RE = re.compile(r"[^.!?。！？\n]+(?:[.!?。！？]+[\"'”’)]*|\n|$)")

STOP_WORDS_EN = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "myself",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "ourselves",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "yourself",
        "yourselves",
    ]
)
# Single-character function words: the Chinese analogue of English stop words, used both
# for the stop-word ratio and to skip them in summaries.
STOP_WORDS_ZH = frozenset("的了是在和有就不人都一也很到说要去你会着没看好自己这那他她它们我与及或而之其")


def tokenize(text: str) -> list[str]:
    """Split text into deterministic tokens: words, digit runs, punctuation, single CJK chars."""
    return _TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
    """Return the number of tokens `tokenize` would produce, without building the list."""
    return sum(1 for _ in _TOKEN_RE.finditer(text))


def words(text: str) -> list[str]:
    """Return lower-cased word tokens (letters only; each CJK character is one word)."""
    return [w.lower() for w in _WORD_RE.findall(text)]


def is_cjk(char: str) -> bool:
    """Tell whether a single character belongs to a CJK script."""
    return bool(_CJK_RE.fullmatch(char))


def cjk_count(text: str) -> int:
    """Count CJK characters in text."""
    return len(_CJK_RE.findall(text))


def split_sentences(text: str) -> list[str]:
    """Split on sentence-final punctuation (Latin and CJK) and newlines; drop empties."""
    return [s.strip() for s in _SENTENCE_RE.findall(text) if s.strip()]


def duplicate_ngram_fraction(tokens: list[str], n: int) -> float:
    """Fraction of n-grams that occur more than once (Gopher-style repetition signal)."""
    if len(tokens) < n:
        return 0.0
    grams = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    total = sum(grams.values())
    repeated = sum(c for c in grams.values() if c > 1)
    return repeated / total
