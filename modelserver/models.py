"""Built-in text models: quality scorer, token counter and annotator (one record per element)."""

from __future__ import annotations

import json
import math
import random
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .text import (
    STOP_WORDS_EN,
    STOP_WORDS_ZH,
    cjk_count,
    count_tokens,
    duplicate_ngram_fraction,
    split_sentences,
    tokenize,
    words,
)

__all__ = [
    "MODELS",
    "Annotator",
    "InvalidInput",
    "OutputTensor",
    "Params",
    "Prediction",
    "QualityScorer",
    "TensorSpec",
    "TextModel",
    "TokenCounter",
    "build_registry",
]


class InvalidInput(ValueError):
    """A request the model cannot process; the server maps it to INVALID_ARGUMENT."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, datatype and shape (-1 = variable) of one model input or output."""

    name: str
    datatype: str
    shape: tuple[int, ...] = (-1,)


@dataclass
class OutputTensor:
    """One output tensor: values are flattened row-major, one element per record."""

    name: str
    datatype: str
    values: list[Any]
    shape: list[int]


@dataclass
class Prediction:
    """Model outputs plus the token usage the server reports in response parameters."""

    outputs: list[OutputTensor]
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Params:
    """Typed, validated access to request parameters (KServe InferParameter values)."""

    values: Mapping[str, Any] = field(default_factory=dict)

    def get_int(self, name: str, default: int, lo: int, hi: int) -> int:
        """Return an integer parameter within [lo, hi]; strings of digits are accepted."""
        raw = self.values.get(name, default)
        try:
            value = int(raw) if not isinstance(raw, bool) else None
        except (TypeError, ValueError):
            value = None
        if value is None or not lo <= value <= hi:
            raise InvalidInput(f"parameter {name!r} must be an integer in [{lo}, {hi}], got {raw!r}")
        return value

    def get_float(self, name: str, default: float, lo: float, hi: float) -> float:
        """Return a float parameter; KServe has no double, so floats travel as strings."""
        raw = self.values.get(name, default)
        try:
            value = float(raw) if not isinstance(raw, bool) else math.nan
        except (TypeError, ValueError):
            value = math.nan
        if not lo <= value <= hi:  # NaN fails both comparisons
            raise InvalidInput(f"parameter {name!r} must be a number in [{lo}, {hi}], got {raw!r}")
        return value

    def get_bool(self, name: str, default: bool) -> bool:
        """Return a boolean parameter; "true"/"false" strings are accepted too."""
        raw = self.values.get(name, default)
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in {"true", "false", "1", "0"}:
            return raw.lower() in {"true", "1"}
        raise InvalidInput(f"parameter {name!r} must be a boolean, got {raw!r}")


class TextModel(ABC):
    """A model over a BYTES input tensor `text` of shape [N], one UTF-8 record per element."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    inputs: ClassVar[tuple[TensorSpec, ...]] = (TensorSpec("text", "BYTES"),)
    outputs: ClassVar[tuple[TensorSpec, ...]]

    @abstractmethod
    def predict(self, texts: list[str], params: Params) -> Prediction:
        """Run the model over a batch of records."""


def _clamp01(x: float) -> float:
    """Clamp to [0, 1]."""
    return max(0.0, min(1.0, x))


def _ramp_down(value: float, ok: float, bad: float) -> float:
    """1 up to `ok`, falling linearly to 0 at `bad` (a soft version of a hard cut-off)."""
    if value <= ok:
        return 1.0
    return _clamp01(1.0 - (value - ok) / (bad - ok))


# ---------------------------------------------------------------------------- quality scorer


class QualityScorer(TextModel):
    """Pre-training cleaning heuristics (Gopher/C4 style) folded into a 0..1 score."""

    name = "quality-scorer"
    outputs = (
        TensorSpec("score", "FP32"),
        TensorSpec("keep", "BOOL"),
        TensorSpec("signals", "BYTES"),
    )

    def predict(self, texts: list[str], params: Params) -> Prediction:
        """Score each record; `signals` is the per-record JSON of raw signals and flags."""
        min_words = params.get_int("min_words", 20, 1, 1_000_000)
        max_words = params.get_int("max_words", 100_000, min_words, 100_000_000)
        ngram = params.get_int("ngram", 3, 1, 10)
        threshold = params.get_float("threshold", 0.5, 0.0, 1.0)
        scores, keeps, signals = [], [], []
        prompt_tokens = 0
        for text in texts:
            tokens = tokenize(text)
            prompt_tokens += len(tokens)
            sig = self._signals(text, tokens, ngram)
            parts = self._subscores(sig, min_words, max_words)
            score = math.prod(parts.values())
            sig["subscores"] = {k: round(v, 4) for k, v in parts.items()}
            sig["flags"] = sorted(k for k, v in parts.items() if v < 1.0)
            scores.append(round(score, 6))
            keeps.append(score >= threshold)
            signals.append(json.dumps(sig, ensure_ascii=False, sort_keys=True))
        n = len(texts)
        return Prediction(
            outputs=[
                OutputTensor("score", "FP32", scores, [n]),
                OutputTensor("keep", "BOOL", keeps, [n]),
                OutputTensor("signals", "BYTES", signals, [n]),
            ],
            prompt_tokens=prompt_tokens,
            # A classifier emits no text: reporting zero is the honest count.
            completion_tokens=0,
        )

    @staticmethod
    def _signals(text: str, tokens: list[str], ngram: int) -> dict[str, Any]:
        """Compute the raw signals of one record."""
        visible = [c for c in text if not c.isspace()]
        n_visible = max(1, len(visible))
        n_cjk = cjk_count(text)
        symbols = sum(1 for c in visible if not c.isalnum())
        digits = sum(1 for c in visible if c.isdigit())
        ws = words(text)
        latin = [w for w in ws if not cjk_count(w)]
        stop = sum(1 for w in ws if w in STOP_WORDS_EN or w in STOP_WORDS_ZH)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        dup_lines = (len(lines) - len(set(lines))) / len(lines) if lines else 0.0
        return {
            "chars": len(text),
            "words": len(ws),
            "tokens": len(tokens),
            "cjk_chars": n_cjk,
            "mean_word_length": round(sum(map(len, latin)) / len(latin), 3) if latin else 0.0,
            "symbol_ratio": round(symbols / n_visible, 4),
            "digit_ratio": round(digits / n_visible, 4),
            "dup_ngram_fraction": round(duplicate_ngram_fraction([t.lower() for t in tokens], ngram), 4),
            "dup_line_fraction": round(dup_lines, 4),
            "stop_word_ratio": round(stop / len(ws), 4) if ws else 0.0,
        }

    @staticmethod
    def _subscores(sig: dict[str, Any], min_words: int, max_words: int) -> dict[str, float]:
        """Map each signal to [0, 1]; thresholds follow the Gopher rules, softened to ramps."""
        n_words = sig["words"]
        length = 0.0 if n_words > max_words else _clamp01(n_words / min_words)
        mwl = sig["mean_word_length"]
        # Gopher keeps mean word length in [3, 10]; CJK-only text has no Latin words.
        if mwl == 0.0:
            word_len = 1.0 if sig["cjk_chars"] else 0.0
        elif mwl < 3:
            word_len = _clamp01(mwl / 3)
        else:
            word_len = _ramp_down(mwl, 10, 20)
        return {
            "length": length,
            "word_length": word_len,
            "symbols": _ramp_down(sig["symbol_ratio"], 0.10, 0.50),
            "digits": _ramp_down(sig["digit_ratio"], 0.15, 0.50),
            "repetition": _ramp_down(sig["dup_ngram_fraction"], 0.15, 0.60)
            * _ramp_down(sig["dup_line_fraction"], 0.30, 0.90),
            "stop_words": _clamp01(sig["stop_word_ratio"] / 0.06),
        }


# ----------------------------------------------------------------------------- token counter


class TokenCounter(TextModel):
    """Counts tokens with the deterministic regex tokenizer (words, digits, punctuation, CJK)."""

    name = "token-counter"
    outputs = (TensorSpec("token_count", "INT64"), TensorSpec("tokens", "BYTES"))

    def predict(self, texts: list[str], params: Params) -> Prediction:
        """Return per-record counts; the token lists only when `return_tokens` is true."""
        return_tokens = params.get_bool("return_tokens", False)
        token_lists = [tokenize(t) for t in texts]
        counts = [len(t) for t in token_lists]
        outputs = [OutputTensor("token_count", "INT64", counts, [len(texts)])]
        if return_tokens:
            payload = [json.dumps(t, ensure_ascii=False) for t in token_lists]
            outputs.append(OutputTensor("tokens", "BYTES", payload, [len(texts)]))
        return Prediction(outputs=outputs, prompt_tokens=sum(counts), completion_tokens=0)


# --------------------------------------------------------------------------------- annotator

# Keyword lexicon per topic; Chinese keywords match as substrings since Chinese has no spaces.
TOPIC_LEXICON: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {
    "technology": (
        frozenset(
            [
                "software",
                "hardware",
                "computer",
                "algorithm",
                "data",
                "cloud",
                "ai",
                "model",
                "neural",
                "network",
                "gpu",
                "chip",
                "internet",
                "code",
                "programming",
                "database",
                "server",
                "api",
                "startup",
                "robot",
            ]
        ),
        (
            "软件",
            "硬件",
            "计算机",
            "算法",
            "数据",
            "人工智能",
            "模型",
            "芯片",
            "互联网",
            "编程",
            "服务器",
        ),
    ),
    "finance": (
        frozenset(
            [
                "bank",
                "market",
                "stock",
                "stocks",
                "bond",
                "investment",
                "investor",
                "price",
                "inflation",
                "revenue",
                "profit",
                "economy",
                "economic",
                "trade",
                "currency",
                "loan",
                "tax",
                "fund",
            ]
        ),
        (
            "银行",
            "市场",
            "股票",
            "投资",
            "价格",
            "通胀",
            "收入",
            "利润",
            "经济",
            "贸易",
            "货币",
            "基金",
        ),
    ),
    "health": (
        frozenset(
            [
                "health",
                "disease",
                "patient",
                "doctor",
                "hospital",
                "medicine",
                "vaccine",
                "virus",
                "treatment",
                "clinical",
                "symptoms",
                "drug",
                "therapy",
                "diet",
            ]
        ),
        ("健康", "疾病", "患者", "医生", "医院", "药", "疫苗", "病毒", "治疗", "临床"),
    ),
    "sports": (
        frozenset(
            [
                "game",
                "team",
                "player",
                "match",
                "season",
                "league",
                "coach",
                "score",
                "goal",
                "tournament",
                "championship",
                "football",
                "basketball",
                "olympic",
            ]
        ),
        ("比赛", "球队", "球员", "赛季", "联赛", "教练", "进球", "冠军", "足球", "篮球", "奥运"),
    ),
    "science": (
        frozenset(
            [
                "research",
                "scientist",
                "experiment",
                "physics",
                "chemistry",
                "biology",
                "theory",
                "universe",
                "climate",
                "species",
                "energy",
                "molecule",
                "quantum",
                "study",
            ]
        ),
        ("研究", "科学", "实验", "物理", "化学", "生物", "理论", "宇宙", "气候", "能源", "量子"),
    ),
    "politics": (
        frozenset(
            [
                "government",
                "election",
                "president",
                "minister",
                "policy",
                "parliament",
                "law",
                "vote",
                "party",
                "senate",
                "congress",
                "court",
                "diplomatic",
            ]
        ),
        ("政府", "选举", "总统", "部长", "政策", "议会", "法律", "投票", "政党", "法院", "外交"),
    ),
    "education": (
        frozenset(
            [
                "school",
                "student",
                "students",
                "teacher",
                "university",
                "education",
                "course",
                "exam",
                "learning",
                "curriculum",
                "degree",
                "classroom",
            ]
        ),
        ("学校", "学生", "老师", "教师", "大学", "教育", "课程", "考试", "学习"),
    ),
}
_HAN_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_RE = re.compile(r"[A-Za-z\u00c0-\u024f]")


def guess_language(text: str) -> tuple[str, float]:
    """Guess en/zh/other from the script mix (and English stop words); return (code, share)."""
    letters = sum(1 for c in text if c.isalpha())
    if not letters:
        return "other", 0.0
    han = len(_HAN_RE.findall(text))
    latin = len(_LATIN_RE.findall(text))
    if han / letters >= 0.3:
        return "zh", round(han / letters, 3)
    if latin / letters >= 0.7:
        ws = words(text)
        # Latin script alone does not make English (French, Indonesian...): require function words.
        if len(ws) < 4 or any(w in STOP_WORDS_EN for w in ws):
            return "en", round(latin / letters, 3)
    return "other", round(max(han, latin) / letters, 3)


_CJK_RUN_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")


def _content_units(text: str) -> list[str]:
    """Meaningful units: Latin words minus stop words, and Han bigrams between stop characters."""
    units = [w for w in words(_CJK_RUN_RE.sub(" ", text)) if w not in STOP_WORDS_EN and len(w) > 1 and not cjk_count(w)]
    # Chinese has no spaces and most words are two characters: character bigrams inside runs
    # of non-stop characters approximate words without a dictionary.
    for run in _CJK_RUN_RE.findall(text):
        for chunk in re.split(f"[{''.join(sorted(STOP_WORDS_ZH))}]", run):
            if len(chunk) == 1:
                units.append(chunk)
            units.extend(chunk[i : i + 2] for i in range(len(chunk) - 1))
    return units


class Annotator(TextModel):
    """Structured annotation per record: language, topic label, keywords, extractive summary."""

    name = "annotator"
    outputs = (
        TensorSpec("annotation", "BYTES"),
        TensorSpec("prompt_tokens", "INT64"),
        TensorSpec("completion_tokens", "INT64"),
    )

    def predict(self, texts: list[str], params: Params) -> Prediction:
        """Annotate each record; completion tokens count the emitted annotation JSON."""
        max_tokens = params.get_int("max_tokens", 64, 1, 8192)
        temperature = params.get_float("temperature", 0.0, 0.0, 10.0)
        seed = params.get_int("seed", 0, -(2**62), 2**62)
        max_keywords = params.get_int("max_keywords", 5, 0, 50)
        annotations, prompt_counts, completion_counts = [], [], []
        for i, text in enumerate(texts):
            language, confidence = guess_language(text)
            topic, topic_scores = self._topic(text)
            units = _content_units(text)
            freq = Counter(units)
            # Seed per record so a record's summary does not depend on its batch neighbours.
            rng = random.Random(f"{seed}:{i}:{len(text)}") if temperature > 0 else None
            summary = self._summary(text, language, freq, max_tokens, temperature, rng)
            annotation = {
                "language": language,
                "language_confidence": confidence,
                "topic": topic,
                "topic_scores": topic_scores,
                "keywords": [w for w, _ in freq.most_common(max_keywords)],
                "summary": summary,
            }
            encoded = json.dumps(annotation, ensure_ascii=False, sort_keys=True)
            annotations.append(encoded)
            prompt_counts.append(count_tokens(text))
            completion_counts.append(count_tokens(encoded))
        n = len(texts)
        return Prediction(
            outputs=[
                OutputTensor("annotation", "BYTES", annotations, [n]),
                OutputTensor("prompt_tokens", "INT64", prompt_counts, [n]),
                OutputTensor("completion_tokens", "INT64", completion_counts, [n]),
            ],
            prompt_tokens=sum(prompt_counts),
            completion_tokens=sum(completion_counts),
        )

    @staticmethod
    def _topic(text: str) -> tuple[str, dict[str, int]]:
        """Label by keyword hits; ties go to the lexicon order, no hits to "general"."""
        ws = Counter(words(text))
        scores = {}
        for topic, (en, zh) in TOPIC_LEXICON.items():
            hits = sum(ws[w] for w in en) + sum(text.count(k) for k in zh)
            if hits:
                scores[topic] = hits
        if not scores:
            return "general", {}
        return max(scores, key=lambda t: scores[t]), scores

    @staticmethod
    def _summary(
        text: str,
        language: str,
        freq: Counter[str],
        max_tokens: int,
        temperature: float,
        rng: random.Random | None,
    ) -> str:
        """Pick the highest-scoring sentences (sampled when temperature > 0) within max_tokens."""
        sentences = split_sentences(text)
        if not sentences:
            return ""
        top = max(freq.values()) if freq else 1

        def score(idx: int, sentence: str) -> float:
            units = _content_units(sentence)
            base = sum(freq[u] for u in units) / (top * max(1, len(units))) if units else 0.0
            # Lead sentences summarise news-like text well; a small bonus breaks ties.
            return base + (0.1 if idx == 0 else 0.0)

        scored = [(score(i, s), i) for i, s in enumerate(sentences)]
        if rng is None:
            order = [i for _, i in sorted(scored, key=lambda p: (-p[0], p[1]))]
        else:
            # Gumbel-top-k: sampling without replacement from softmax(score / temperature).
            keyed = [(s / temperature - math.log(-math.log(rng.random() or 1e-12)), i) for s, i in scored]
            order = [i for _, i in sorted(keyed, reverse=True)]
        chosen, used = [], 0
        for i in order:
            n = count_tokens(sentences[i])
            if used + n > max_tokens:
                if not chosen:
                    chosen.append((i, _truncate_tokens(sentences[i], max_tokens)))
                break
            chosen.append((i, sentences[i]))
            used += n
        sep = "" if language == "zh" else " "
        return sep.join(s for _, s in sorted(chosen))


def _truncate_tokens(text: str, limit: int) -> str:
    """Cut text after its `limit`-th token, keeping the original spacing."""
    tokens = tokenize(text)
    if len(tokens) <= limit:
        return text
    pos = 0
    for token in tokens[:limit]:
        pos = text.index(token, pos) + len(token)
    return text[:pos]


MODELS: tuple[type[TextModel], ...] = (QualityScorer, TokenCounter, Annotator)


def build_registry() -> dict[str, TextModel]:
    """Instantiate every built-in model, keyed by name."""
    return {cls.name: cls() for cls in MODELS}
