"""The built-in models do real text work: tokenizer, quality heuristics, annotation."""

from __future__ import annotations

import json

import pytest

from modelserver.models import Annotator, InvalidInput, Params, QualityScorer, TokenCounter
from modelserver.text import count_tokens, split_sentences, tokenize

CLEAN_EN = (
    "The central bank raised interest rates on Tuesday to slow inflation. Investors had "
    "expected the move, and the stock market was calm after the announcement. Analysts said "
    "that the economy is still growing but that prices for food and energy remain high."
)
CLEAN_ZH = (
    "研究人员发布了新的人工智能模型。这个模型可以在普通的服务器上运行，"
    "数据中心的芯片需求因此增加。专家认为这对软件行业是一个好消息。"
)


def _outputs(pred: object) -> dict[str, list]:
    return {o.name: o.values for o in pred.outputs}  # type: ignore[attr-defined]


def test_it_tokenizes_words_digits_punctuation_and_cjk_characters() -> None:
    assert tokenize("Don't stop: 2024 was great!") == [
        "Don't",
        "stop",
        ":",
        "2024",
        "was",
        "great",
        "!",
    ]
    assert tokenize("AI模型，很好") == ["AI", "模", "型", "，", "很", "好"]
    assert tokenize("well-known e-mail") == ["well-known", "e-mail"]
    for text in (CLEAN_EN, CLEAN_ZH, "", "  \n "):
        assert count_tokens(text) == len(tokenize(text))


def test_it_splits_latin_and_cjk_sentences() -> None:
    assert split_sentences("One. Two! 三。四？") == ["One.", "Two!", "三。", "四？"]


def test_quality_scorer_keeps_clean_prose_in_both_languages() -> None:
    pred = QualityScorer().predict([CLEAN_EN, CLEAN_ZH], Params())
    out = _outputs(pred)
    assert out["keep"] == [True, True]
    assert all(s > 0.9 for s in out["score"])
    assert json.loads(out["signals"][0])["flags"] == []
    assert pred.prompt_tokens == count_tokens(CLEAN_EN) + count_tokens(CLEAN_ZH)
    assert pred.completion_tokens == 0


def test_quality_scorer_flags_symbol_digit_spam_and_repetition() -> None:
    spam = "$$$ ### 1234-5678 @@@ 99999 %%% !!! 31337 &&& ***" * 3
    repeated = "click here to win a prize now " * 30
    out = _outputs(QualityScorer().predict([spam, repeated], Params()))
    spam_sig, rep_sig = (json.loads(s) for s in out["signals"])
    assert {"symbols", "digits"} <= set(spam_sig["flags"])
    assert "repetition" in rep_sig["flags"]
    assert rep_sig["dup_ngram_fraction"] > 0.9
    assert out["keep"] == [False, False]
    assert all(s < 0.2 for s in out["score"])


def test_quality_scorer_length_rule_follows_min_words_parameter() -> None:
    short = "The cat sat on the mat with a hat."
    strict = _outputs(QualityScorer().predict([short], Params({"min_words": 50})))
    lenient = _outputs(QualityScorer().predict([short], Params({"min_words": 5})))
    assert "length" in json.loads(strict["signals"][0])["flags"]
    assert lenient["score"][0] > strict["score"][0]


def test_token_counter_counts_and_optionally_returns_tokens() -> None:
    pred = TokenCounter().predict(["a b, c", "数据"], Params({"return_tokens": True}))
    out = _outputs(pred)
    assert out["token_count"] == [4, 2]
    assert json.loads(out["tokens"][1]) == ["数", "据"]
    assert pred.prompt_tokens == 6
    assert "tokens" not in _outputs(TokenCounter().predict(["x"], Params()))


def test_annotator_labels_language_topic_and_summarises_within_budget() -> None:
    russian = "Привет, как дела? Сегодня хорошая погода."
    pred = Annotator().predict([CLEAN_EN, CLEAN_ZH, russian], Params({"max_tokens": 16}))
    out = _outputs(pred)
    en, zh, ru = (json.loads(a) for a in out["annotation"])
    assert (en["language"], en["topic"]) == ("en", "finance")
    assert (zh["language"], zh["topic"]) == ("zh", "technology")
    assert ru["language"] == "other"
    for a in (en, zh, ru):
        assert 0 < count_tokens(a["summary"]) <= 16
    # The summary is extractive: its text comes from the record.
    assert en["summary"].split(" ")[0] in CLEAN_EN
    assert zh["summary"][:5] in CLEAN_ZH
    # Honest usage: completion tokens are the tokens of what was emitted.
    assert out["completion_tokens"] == [count_tokens(a) for a in out["annotation"]]
    assert pred.completion_tokens == sum(out["completion_tokens"])
    assert pred.prompt_tokens == sum(out["prompt_tokens"])


def test_annotator_temperature_samples_reproducibly_by_seed() -> None:
    text = " ".join(f"Sentence number {w} talks about topic {w}." for w in "abcdefghij")
    greedy = [
        json.loads(Annotator().predict([text], Params({"max_tokens": 7})).outputs[0].values[0])["summary"]
        for _ in range(3)
    ]
    assert len(set(greedy)) == 1

    def sampled(seed: int) -> str:
        params = Params({"max_tokens": 7, "temperature": "2.0", "seed": seed})
        return json.loads(Annotator().predict([text], params).outputs[0].values[0])["summary"]

    assert sampled(7) == sampled(7)
    assert len({sampled(s) for s in range(10)}) > 1


@pytest.mark.parametrize(
    "params",
    [{"max_tokens": 0}, {"max_tokens": "many"}, {"temperature": "-1"}, {"temperature": True}],
)
def test_annotator_rejects_bad_parameters(params: dict) -> None:
    with pytest.raises(InvalidInput, match="parameter"):
        Annotator().predict(["x"], Params(params))
