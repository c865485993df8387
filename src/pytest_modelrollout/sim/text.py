"""Text helpers of the simulator: scripts, language, words, bigrams, sentences, tokens, seeds.

Everything here is pure and deterministic. Randomness is always a :class:`random.Random`
instance seeded from a sha256 digest (never the global ``random`` state).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from typing import Literal

# imported with the simulator's modules (only where it serves: the sim package loads them on
# first use), not by the thread of the first request that needs it: a module of the plugin
# imported under pytest is rewritten (an AST parse), which CPython 3.11 cannot do on two
# threads at once (gh-106905)
from ..language import detect_language as plugin_detect

Lang = Literal["en", "zh", "mixed"]

HAN_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
HAN_RUN_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
LATIN_WORD_RE = re.compile(r"[A-Za-z]+(?:['’][A-Za-z]+)*")
WORD_RE = re.compile(r"[A-Za-z0-9]+(?:['’\-][A-Za-z0-9]+)*")

STOPWORDS = frozenset(
    ["a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are", "aren't", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "can't", "cannot", "could", "did", "do", "does", "doing", "don't", "down", "during", "each", "few", "for", "from", "further", "had", "has", "have", "having", "he", "her", "here", "hers", "herself", "him", "himself", "his", "how", "i", "i'd", "i'm", "i've", "if", "in", "into", "is", "isn't", "it", "it's", "its", "itself", "let's", "me", "more", "most", "my", "myself", "no", "nor", "not", "of", "off", "on", "once", "only", "or", "other", "ought", "our", "ours", "ourselves", "out", "over", "own", "same", "she", "should", "so", "some", "such", "than", "that", "that's", "the", "their", "theirs", "them", "themselves", "then", "there", "there's", "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "very", "was", "we", "were", "what", "what's", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you", "your", "yours", "yourself", "yourselves", "please", "hi", "hello", "hey", "thanks", "thank", "could", "would", "can", "may", "might", "must", "shall", "also", "just", "get", "got", "want", "need", "like", "tell", "know", "give", "make", "one", "two", "us", "via", "per", "yes", "ok", "okay", "dear", "regards", "question", "answer", "reply", "json", "use", "using", "return", "based", "following", "given", "context"]
)

# Chinese function bigrams that carry no topic (ignored when measuring overlap).
ZH_STOP_BIGRAMS = frozenset(
    ["你们", "我们", "他们", "们的", "是什", "什么", "么时", "时候", "多少", "怎么", "么样", "如何", "可以", "请问", "一下", "这个", "那个", "是否", "有没", "没有", "哪里", "为什", "么呢", "吗？", "的是", "是的", "我的", "你的", "能不", "不能", "需要", "应该", "一个", "告诉", "帮我", "我想", "请帮", "问题", "是多", "多久", "久？", "里面", "以及", "还是", "或者", "因为", "所以", "但是", "如果", "然后", "现在", "今天"]
)

# Chinese terms -> English stems, so a Chinese prompt can match English tool descriptions.
ZH_LEXICON: dict[str, tuple[str, ...]] = {
    "天气": ("weather", "forecast"),
    "气温": ("weather", "temperature"),
    "温度": ("temperature", "weather"),
    "订单": ("order",),
    "退款": ("refund",),
    "退货": ("return", "refund"),
    "物流": ("shipping", "track", "delivery", "shipment"),
    "快递": ("shipping", "track", "delivery", "package"),
    "配送": ("delivery", "shipping"),
    "发货": ("shipping", "ship"),
    "跟踪": ("track",),
    "查询": ("lookup", "search", "get", "query", "check", "status"),
    "状态": ("status",),
    "搜索": ("search",),
    "查找": ("search", "find", "lookup"),
    "航班": ("flight",),
    "机票": ("flight", "ticket"),
    "预订": ("book", "reservation"),
    "预定": ("book", "reservation"),
    "取消": ("cancel",),
    "邮件": ("email", "mail"),
    "发送": ("send",),
    "日历": ("calendar",),
    "日程": ("calendar", "schedule", "event"),
    "会议": ("meeting", "calendar", "event"),
    "股票": ("stock",),
    "股价": ("stock", "price"),
    "价格": ("price",),
    "翻译": ("translate",),
    "计算": ("calculate", "compute"),
    "汇率": ("exchange", "rate", "currency", "convert"),
    "换算": ("convert",),
    "时间": ("time",),
    "账户": ("account",),
    "账号": ("account",),
    "密码": ("password",),
    "重置": ("reset",),
    "酒店": ("hotel",),
    "餐厅": ("restaurant",),
    "地址": ("address",),
    "用户": ("user", "customer"),
    "客户": ("customer",),
    "发票": ("invoice",),
    "支付": ("payment", "pay"),
    "付款": ("payment", "pay"),
    "余额": ("balance",),
    "库存": ("inventory", "stock"),
    "商品": ("product", "item"),
    "产品": ("product",),
    "工单": ("ticket",),
    "投诉": ("complaint", "ticket"),
    "创建": ("create",),
    "新建": ("create",),
    "更新": ("update",),
    "修改": ("update", "change"),
    "删除": ("delete",),
    "提醒": ("reminder",),
    "新闻": ("news",),
    "地图": ("map",),
    "路线": ("route", "directions"),
    "汇款": ("transfer",),
    "转账": ("transfer",),
}

CITY_ZH = (
    "北京", "上海", "广州", "深圳", "杭州", "成都", "重庆", "南京", "武汉", "西安", "天津", "苏州",
    "长沙", "郑州", "青岛", "厦门", "香港", "台北", "东京", "纽约", "伦敦", "巴黎", "新加坡", "大连",
    "昆明", "沈阳", "哈尔滨", "济南", "福州", "合肥", "宁波", "无锡",
)


def han_count(text: str) -> int:
    return len(HAN_RE.findall(text))


def latin_words(text: str) -> list[str]:
    """Alphabetic words of two letters or more (identifiers like ``A-1234`` do not count)."""
    return [w for w in LATIN_WORD_RE.findall(text) if len(w) >= 2]


def detect_language(text: str) -> Lang:
    """``en``, ``zh`` or ``mixed``: the plugin's own detector, narrowed to the three languages the
    simulator answers in (anything else is answered in English). One detector for both sides, so
    a persona's "same language as the prompt" is exactly what ``expect_language`` checks."""
    lang = plugin_detect(text)
    if lang == "zh":
        return "zh"
    if lang == "mixed":
        return "mixed"
    return "en"


def stem(word: str) -> str:
    w = word.lower().replace("’", "'")
    if w.endswith("'s"):
        w = w[:-2]
    for suffix in ("ing", "ed", "es", "s"):
        if len(w) > len(suffix) + 2 and w.endswith(suffix):
            w = w[: -len(suffix)]
            break
    return w


def content_words(text: str) -> list[str]:
    """Lower-cased non-stopword words (letters, at least 3 chars), in order, unique."""
    seen: dict[str, None] = {}
    for w in LATIN_WORD_RE.findall(text):
        lw = w.lower()
        if len(lw) < 3 or lw in STOPWORDS:
            continue
        seen.setdefault(lw, None)
    return list(seen)


def stems(text: str) -> set[str]:
    out = {stem(w) for w in content_words(text)}
    for term, english in ZH_LEXICON.items():
        if term in text:
            out.update(stem(e) for e in english)
    return out


def han_bigrams(text: str) -> set[str]:
    grams: set[str] = set()
    for run in HAN_RUN_RE.findall(text):
        for i in range(len(run) - 1):
            g = run[i : i + 2]
            if g not in ZH_STOP_BIGRAMS:
                grams.add(g)
    return grams


def overlap(a: str, b: str) -> float:
    """Topic overlap of two texts: shared English stems + shared Chinese bigrams."""
    sa, sb = stems(a), stems(b)
    ga, gb = han_bigrams(a), han_bigrams(b)
    return float(len(sa & sb)) + float(len(ga & gb))


_SENT_RE = re.compile(r"[^。！？!?；;\n]+(?:[。！？!?；;]+|\n|$)|[^.]+(?:\.(?=\s|$))")


def split_sentences(text: str) -> list[str]:
    """Split English (``. ! ?``) and Chinese (``。！？；``) sentences; keeps the punctuation."""
    out: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        # Chinese terminators and ! ? ;
        parts = re.split(r"(?<=[。！？!?；])", line)
        for part in parts:
            # English full stop followed by whitespace (not decimals like 12.50)
            for piece in re.split(r"(?<=\.)\s+(?=[A-Z0-9\"'(\[])", part):
                piece = piece.strip()
                if piece:
                    out.append(piece)
    return out


def count_tokens(text: str) -> int:
    """Approximate tokens: one per Han character, ~1.3 per other word, a few for punctuation."""
    if not text:
        return 0
    han = han_count(text)
    words = len(WORD_RE.findall(HAN_RE.sub(" ", text)))
    punct = len(re.findall(r"[{}\[\]:,\"]", text))
    return max(1, han + math.ceil(words * 1.3) + punct // 3)


def digest(*parts: str) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8", "surrogatepass"))
        h.update(b"\x1f")
    return h.digest()


def unit(*parts: str) -> float:
    """A deterministic number in [0, 1) from the parts."""
    return int.from_bytes(digest(*parts)[:8], "big") / 2.0**64


def rng(*parts: str) -> random.Random:
    """A private, deterministic random generator seeded from the parts."""
    return random.Random(int.from_bytes(digest(*parts)[:16], "big"))
