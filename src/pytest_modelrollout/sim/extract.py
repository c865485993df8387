"""Facts extracted from a prompt, and JSON values generated from a JSON Schema.

The simulator fills JSON fields and tool arguments from the prompt where a field's name says
what it is (``order_id`` -> a token like ``A-1234``, ``amount`` -> the first decimal number,
``email`` -> an e-mail address, ``city`` -> a capitalised place name, ...), and otherwise with
plausible deterministic values. Generated values satisfy the schema (types, enums, required,
nested objects, arrays, ``$ref`` to ``$defs`` as pydantic emits, simple bounds).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

from .text import (
    CITY_ZH,
    HAN_RE,
    STOPWORDS,
    Lang,
    content_words,
    detect_language,
    split_sentences,
    stem,
    stems,
)

_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
_URL_RE = re.compile(r"https?://[^\s)\"'<>，。]+")
_PHONE_RE = re.compile(r"(?<![\w-])\+?\d[\d\s\-()]{6,}\d(?![\w-])")
_ID_RE = re.compile(
    r"(?<![\w-])(?:[A-Z]{1,5}-?\d{3,}[A-Z0-9-]*|[A-Z]{2,5}\d{2,}[A-Z0-9]*)(?![\w-])|#\s?(\d{3,})"
)
_LONG_NUM_RE = re.compile(r"(?<![\d.])\d{5,}(?![\d.])")
_DECIMAL_RE = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})*\.\d+|(?<![\w.,])\d+\.\d+")
_MONEY_RE = re.compile(
    r"(?:[$€£¥￥]|USD|EUR|CNY|RMB|GBP)\s?(\d[\d,]*(?:\.\d+)?)|(\d[\d,]*(?:\.\d+)?)\s?(?:元|块|美元|欧元|dollars?|euros?|USD|EUR|CNY|RMB)"
)
_NUM_RE = re.compile(r"(?<![\w.\-#])\d+(?:\.\d+)?(?![\w.-]*\d)")
_ISO_DATE_RE = re.compile(r"\b(\d{4})[-/](\d{1,2})[-/](\d{1,2})\b")
_ZH_DATE_RE = re.compile(r"(\d{4})年(\d{1,2})月(\d{1,2})[日号]")
_ZH_MD_RE = re.compile(r"(?<![年\d])(\d{1,2})月(\d{1,2})[日号]")
_FROM_RE = re.compile(r"\bfrom\s+([A-Z][a-z]+(?:\s+[A-Z][a-z]+)?)|从\s*([\u4e00-\u9fff]{2,3}?)(?:市)?\s*(?:到|去|飞|出发|至)")
_TO_RE = re.compile(r"\bto\s+([A-Z][a-z]+(?:\s+[A-Z][a-z]+)?)|(?:到|去|飞往|至)\s*([\u4e00-\u9fff]{2,3}?)(?:市)?(?:的|，|。|\s|$|出差|旅游)")
_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november", "december"]
    )
}
_EN_DATE_RE = re.compile(
    r"\b(January|February|March|April|May|June|July|August|September|October|November|December)"
    r"\s+(\d{1,2})(?:st|nd|rd|th)?(?:,?\s+(\d{4}))?",
    re.IGNORECASE,
)
_NAME_INTRO_RE = re.compile(
    r"(?:my name is|i am|i'm|this is|name:|name is|customer:?|from:)\s+([A-Z][a-z]+(?:\s+[A-Z][a-z]+)?)",
    re.IGNORECASE,
)
_ZH_NAME_RE = re.compile(r"(?:我叫|我是|姓名[:：]?|客户[:：]?)\s*([\u4e00-\u9fff]{2,3})")
_CAP_PHRASE_RE = re.compile(r"\b[A-Z][a-z]+(?:\s+[A-Z][a-z]+)*")
_PLACE_RE = re.compile(r"\b(?:in|from|to|at|for|near)\s+([A-Z][a-z]+(?:\s+[A-Z][a-z]+)?)")
_ZH_CITY_RE = re.compile(r"([\u4e00-\u9fff]{2,3})市")

_CITIES_EN = frozenset(
    ["Paris", "London", "Berlin", "Tokyo", "Beijing", "Shanghai", "Shenzhen", "Hangzhou", "Madrid", "Rome", "Amsterdam", "Sydney", "Toronto", "Chicago", "Boston", "Seattle", "Singapore", "Dubai", "Mumbai", "Seoul", "Vienna", "Prague", "Lisbon", "Dublin", "Oslo", "Stockholm", "Munich", "Zurich", "Geneva", "Barcelona", "Milan", "Austin", "Denver", "Miami", "Atlanta", "Houston", "Dallas", "Vancouver", "Melbourne", "Osaka", "Bangkok", "Istanbul", "Cairo", "Moscow", "Warsaw", "Budapest", "Brussels", "Copenhagen", "Helsinki", "Athens"]
)
_MULTIWORD_CITIES = ("New York", "San Francisco", "Los Angeles", "Hong Kong", "Las Vegas")
_CITY_ZH_EN = {"北京": "Beijing", "上海": "Shanghai", "深圳": "Shenzhen", "杭州": "Hangzhou"}

_NOT_NAMES = frozenset(
    ["please", "hi", "hello", "dear", "thanks", "thank", "can", "could", "would", "what", "where", "when", "why", "how", "who", "which", "the", "my", "our", "we", "this", "that", "extract", "return", "reply", "give", "find", "get", "book", "send", "check", "tell", "show", "order", "customer", "i", "you", "it", "is", "are", "json", "english", "chinese", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november", "december", "yes", "no", "ok", "okay", "hey", "sorry", "also", "note", "the", "a", "an", "if", "is", "my", "subject", "re", "fwd", "update", "urgent"]
)

# Lexicons used for enum choices (category, sentiment, priority, ...).
_ENUM_LEXICON: dict[str, tuple[str, ...]] = {
    "shipping": ("ship", "deliver", "delivery", "arriv", "track", "package", "parcel", "courier",
                 "快递", "物流", "到货", "发货", "配送", "包裹"),
    "delivery": ("deliver", "arriv", "package", "parcel", "快递", "物流", "配送", "到货"),
    "billing": ("charge", "invoice", "bill", "payment", "paid", "refund", "price", "扣款",
                "发票", "付款", "账单", "收费", "退款"),
    "refund": ("refund", "return", "money back", "退款", "退货", "退钱"),
    "technical": ("error", "crash", "bug", "login", "password", "app", "install", "broken",
                  "闪退", "登录", "报错", "密码", "故障", "崩溃"),
    "account": ("account", "password", "login", "sign in", "email", "账户", "账号", "密码", "登录"),
    "complaint": ("terrible", "angry", "worst", "complain", "投诉", "差评", "生气"),
    "positive": ("love", "great", "thanks", "thank", "excellent", "happy", "awesome", "good",
                 "perfect", "满意", "喜欢", "很好", "谢谢", "不错", "棒"),
    "negative": ("terrible", "bad", "angry", "broken", "worst", "disappoint", "late", "awful",
                 "hate", "poor", "差", "失望", "生气", "坏", "糟糕", "慢", "投诉"),
    "high": ("urgent", "asap", "immediately", "critical", "emergency", "right now", "紧急",
             "马上", "立刻", "尽快", "急"),
    "urgent": ("urgent", "asap", "immediately", "critical", "emergency", "紧急", "马上", "立刻"),
    "low": ("whenever", "no rush", "not urgent", "不急", "有空"),
    "damaged": ("damage", "broken", "broke", "crack", "坏", "破损", "损坏", "碎"),
    "late": ("late", "delay", "still not", "hasn't arrived", "迟", "晚", "还没到", "延误"),
    "wrong": ("wrong", "incorrect", "not what i ordered", "错", "不对", "发错"),
    "celsius": ("celsius", "°c", "摄氏"),
    "fahrenheit": ("fahrenheit", "°f", "华氏"),
}
_ENUM_FALLBACKS = ("other", "neutral", "medium", "normal", "general", "unknown")


def _words_of(name: str) -> list[str]:
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return [w for w in re.split(r"[^A-Za-z0-9]+", s.lower()) if w]


@dataclass
class Facts:
    """What a prompt contains, for filling fields."""

    text: str
    lang: Lang
    ids: list[str] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    money: list[str] = field(default_factory=list)
    decimals: list[str] = field(default_factory=list)
    integers: list[int] = field(default_factory=list)
    dates: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    cities: list[str] = field(default_factory=list)
    origin: str | None = None
    destination: str | None = None
    capitalized: list[str] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    summary: str = ""
    stems: set[str] = field(default_factory=set)

    @classmethod
    def from_text(cls, text: str) -> Facts:
        f = cls(text=text, lang=detect_language(text))
        f.emails = _EMAIL_RE.findall(text)
        f.urls = _URL_RE.findall(text)
        no_mail = _URL_RE.sub(" ", _EMAIL_RE.sub(" ", text))
        for m in _ID_RE.finditer(no_mail):
            f.ids.append(m.group(1) if m.group(1) else m.group(0))
        for m in _LONG_NUM_RE.finditer(no_mail):
            if m.group(0) not in f.ids and len(m.group(0)) < 9:
                f.ids.append(m.group(0))
        f.phones = [p.strip() for p in _PHONE_RE.findall(no_mail) if len(re.sub(r"\D", "", p)) >= 8]
        for m in _MONEY_RE.finditer(no_mail):
            f.money.append((m.group(1) or m.group(2)).replace(",", ""))
        f.decimals = [d.replace(",", "") for d in _DECIMAL_RE.findall(no_mail)]
        f.dates = _dates(text)
        id_digits = {re.sub(r"\D", "", i) for i in f.ids}
        no_dates = no_mail
        for rx in (_ISO_DATE_RE, _ZH_DATE_RE, _ZH_MD_RE, _EN_DATE_RE):
            no_dates = rx.sub(" ", no_dates)
        for m in _NUM_RE.finditer(no_dates):
            tok = m.group(0)
            if "." in tok or tok in id_digits:
                continue
            f.integers.append(int(tok))
        f.names, f.cities, f.capitalized = _names_and_places(text)
        f.cities.sort(key=lambda c: text.find(c) if c in text else len(text))
        for rx, attr in ((_FROM_RE, "origin"), (_TO_RE, "destination")):
            for m in rx.finditer(text):
                place = m.group(1) or m.group(2)
                if place and (place in f.cities or place[0].isupper() or place in CITY_ZH):
                    setattr(f, attr, place)
                    break
        f.words = content_words(text)
        f.stems = stems(text)
        first = text.split("\n\n", 1)[0]
        sents = split_sentences(first) or [first.strip()]
        best = max(sents, key=lambda x: (len(content_words(x)) + len(HAN_RE.findall(x)) / 2, -sents.index(x)))
        f.summary = _clip(best, 160)
        return f


def _clip(s: str, n: int) -> str:
    s = " ".join(s.split())
    if len(s) <= n:
        return s
    cut = s[:n].rsplit(" ", 1)[0] if " " in s[:n] else s[:n]
    return cut.rstrip(",;:，") + "…"


def _dates(text: str) -> list[str]:
    out: list[str] = []
    for m in _ISO_DATE_RE.finditer(text):
        out.append(f"{int(m.group(1)):04d}-{int(m.group(2)):02d}-{int(m.group(3)):02d}")
    for m in _ZH_DATE_RE.finditer(text):
        out.append(f"{int(m.group(1)):04d}-{int(m.group(2)):02d}-{int(m.group(3)):02d}")
    for m in _ZH_MD_RE.finditer(text):
        out.append(f"2025-{int(m.group(1)):02d}-{int(m.group(2)):02d}")
    for m in _EN_DATE_RE.finditer(text):
        year = int(m.group(3)) if m.group(3) else 2025
        out.append(f"{year:04d}-{_MONTHS[m.group(1).lower()]:02d}-{int(m.group(2)):02d}")
    return out


def _names_and_places(text: str) -> tuple[list[str], list[str], list[str]]:
    names: list[str] = []
    cities: list[str] = []
    caps: list[str] = []
    for multi in _MULTIWORD_CITIES:
        if multi in text:
            cities.append(multi)
    for m in _PLACE_RE.finditer(text):
        phrase = m.group(1)
        first = phrase.split()[0]
        if first.lower() not in _NOT_NAMES and phrase not in cities:
            cities.append(phrase)
    for w in re.findall(r"[A-Z][a-z]+", text):
        if w in _CITIES_EN and w not in cities:
            cities.append(w)
    for c in CITY_ZH:
        if c in text and c not in cities:
            cities.append(c)
    for m in _ZH_CITY_RE.finditer(text):
        if m.group(1) not in cities:
            cities.append(m.group(1))
    for m in _NAME_INTRO_RE.finditer(text):
        cand = m.group(1)
        if cand.split()[0].lower() not in _NOT_NAMES:
            names.append(cand)
    for m in _ZH_NAME_RE.finditer(text):
        names.append(m.group(1))
    for m in _CAP_PHRASE_RE.finditer(text):
        words = [w for w in m.group(0).split() if w.lower() not in _NOT_NAMES]
        if not words:
            continue
        phrase = " ".join(words)
        if phrase in cities or any(phrase in c or c in phrase for c in cities):
            continue
        caps.append(phrase)
        if len(words) >= 2 and phrase not in names:
            names.append(phrase)
    # capitalised single words that are not places are the next best names
    for c in caps:
        if c not in names:
            names.append(c)
    return names, cities, caps


# ---------------------------------------------------------------------------------------------
# Values by field name


def _has(words: list[str], *keys: str) -> bool:
    return any(k in words for k in keys)


def _num(s: str) -> float:
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return 0.0


def value_for(name: str, kind: str, facts: Facts) -> Any:
    """A value extracted from the prompt for a field, or None. ``kind`` is the JSON type."""
    w = _words_of(name)
    if not w:
        return None
    joined = "_".join(w)
    if _has(w, "email", "mail"):
        return facts.emails[0] if facts.emails else None
    if _has(w, "phone", "tel", "mobile", "telephone"):
        return facts.phones[0] if facts.phones else None
    if _has(w, "url", "link", "website", "homepage"):
        return facts.urls[0] if facts.urls else None
    if _has(w, "date", "day", "deadline", "dob", "birthday") and kind == "string":
        return facts.dates[0] if facts.dates else None
    if _has(w, "id", "number", "no", "num", "code", "sku", "tracking", "reference", "ref", "ticket",
            "invoice") and not _has(w, "phone", "count", "quantity", "items", "people"):
        if kind == "integer" and facts.ids:
            digits = re.sub(r"\D", "", facts.ids[0])
            return int(digits) if digits else None
        if kind == "string" and facts.ids:
            return facts.ids[0]
        if kind == "integer" and w[-1] in ("number", "num", "no") and facts.integers:
            return facts.integers[0]
        if joined.endswith("id") or "id" in w:
            return None
    if _has(w, "amount", "price", "total", "cost", "refund", "fee", "sum", "balance", "salary",
            "payment", "value", "budget", "subtotal", "charge", "paid"):
        src = facts.money or facts.decimals
        if src:
            return _num(src[0]) if kind in ("number", "integer") else src[0]
        if facts.integers and kind in ("number", "integer"):
            return facts.integers[0]
        return None
    if _has(w, "currency"):
        t = facts.text
        if "$" in t or "USD" in t or "dollar" in t:
            return "USD"
        if "€" in t or "EUR" in t or "euro" in t:
            return "EUR"
        if "£" in t or "GBP" in t:
            return "GBP"
        if any(c in t for c in ("¥", "￥", "元", "CNY", "RMB", "块")):
            return "CNY"
        return None
    if _has(w, "quantity", "qty", "count", "age", "days", "nights", "people", "guests", "seats",
            "passengers", "adults", "children", "items", "hours", "minutes", "year", "years",
            "size", "rooms", "limit", "top", "n") and kind in ("integer", "number"):
        ints = [i for i in facts.integers if i < 100000]
        return ints[0] if ints else None
    if _has(w, "city", "location", "destination", "origin", "place", "address", "from", "to",
            "departure", "arrival", "region", "country"):
        if _has(w, "to", "destination", "arrival") and facts.destination:
            return facts.destination
        if _has(w, "from", "origin", "departure") and facts.origin:
            return facts.origin
        if facts.cities:
            if _has(w, "to", "destination", "arrival") and len(facts.cities) > 1:
                return facts.cities[1]
            return facts.cities[0]
        return None
    if _has(w, "product", "item", "model", "device", "sku_name"):
        return facts.capitalized[0] if facts.capitalized else None
    if _has(w, "name", "customer", "person", "user", "contact", "passenger", "guest", "recipient",
            "author", "sender", "attendee"):
        return facts.names[0] if facts.names else None
    if _has(w, "language", "lang", "locale"):
        return {"en": "en", "zh": "zh", "mixed": "zh"}[facts.lang]
    if _has(w, "summary", "answer", "reply", "response", "description", "reason", "text",
            "message", "content", "explanation", "note", "notes", "comment", "issue", "problem",
            "title", "subject", "question", "query", "body", "details", "request", "keyword",
            "keywords", "search", "q", "topic"):
        if _has(w, "query", "keyword", "keywords", "search", "q", "topic"):
            return " ".join(facts.words[:3]) if facts.words and facts.lang == "en" else facts.summary
        return facts.summary or None
    return None


def choose_enum(name: str, options: list[Any], facts: Facts) -> Any:
    """Pick the enum value the prompt points at (mention, lexicon), else a neutral fallback."""
    if not options:
        return None
    text_l = facts.text.lower()
    strs = [(o, str(o).lower()) for o in options]
    for o, s in strs:
        if len(s) >= 2 and re.search(r"(?<![a-z])" + re.escape(s) + r"(?![a-z])", text_l):
            return o
    best: tuple[int, Any] | None = None
    for o, s in strs:
        score = 0
        for key, cues in _ENUM_LEXICON.items():
            if key == s or (len(s) >= 4 and (key in s or s in key)):
                score += sum(1 for c in cues if c in text_l)
        if stem(s) in facts.stems:
            score += 1
        if score and (best is None or score > best[0]):
            best = (score, o)
    if best:
        return best[1]
    for fb in _ENUM_FALLBACKS:
        for o, s in strs:
            if s == fb:
                return o
    return options[0]


# ---------------------------------------------------------------------------------------------
# Schema-driven generation


class SchemaGen:
    """Generate a value valid for a JSON Schema, filled from the prompt's facts."""

    def __init__(self, root: dict[str, Any], facts: Facts, rnd: random.Random, *,
                 tool_mode: bool = False) -> None:
        self.root = root
        self.facts = facts
        self.rnd = rnd
        self.tool_mode = tool_mode  # objects: required + extractable optional properties

    def resolve(self, schema: Any) -> dict[str, Any]:
        seen = 0
        while isinstance(schema, dict) and "$ref" in schema and seen < 20:
            seen += 1
            ref = str(schema["$ref"])
            target: Any = self.root
            if ref.startswith("#"):
                for part in ref[1:].split("/"):
                    if not part:
                        continue
                    part = part.replace("~1", "/").replace("~0", "~")
                    target = target.get(part) if isinstance(target, dict) else None
            else:
                target = {}
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**(target if isinstance(target, dict) else {}), **rest}
        return schema if isinstance(schema, dict) else {}

    def gen(self, schema: Any, name: str = "", depth: int = 0) -> Any:
        s = self.resolve(schema)
        if depth > 8:
            return None
        if "const" in s:
            return s["const"]
        if isinstance(s.get("enum"), list) and s["enum"]:
            return choose_enum(name, list(s["enum"]), self.facts)
        for key in ("anyOf", "oneOf"):
            if isinstance(s.get(key), list) and s[key]:
                options = [self.resolve(o) for o in s[key]]
                non_null = [o for o in options if o.get("type") != "null"] or options
                return self.gen(non_null[0], name, depth + 1)
        if isinstance(s.get("allOf"), list) and s["allOf"]:
            merged: dict[str, Any] = {}
            for part in s["allOf"]:
                r = self.resolve(part)
                for k, v in r.items():
                    if k == "properties" and isinstance(v, dict):
                        merged.setdefault("properties", {}).update(v)
                    elif k == "required" and isinstance(v, list):
                        merged.setdefault("required", []).extend(v)
                    else:
                        merged.setdefault(k, v)
            extra = {k: v for k, v in s.items() if k != "allOf"}
            return self.gen({**merged, **extra}, name, depth + 1)
        t = s.get("type")
        if isinstance(t, list):
            non_null_t = [x for x in t if x != "null"]
            t = non_null_t[0] if non_null_t else "null"
        if t is None:
            if "properties" in s:
                t = "object"
            elif "items" in s:
                t = "array"
            else:
                t = "string"
        if t == "object":
            return self._object(s, depth)
        if t == "array":
            return self._array(s, name, depth)
        if t == "string":
            return self._string(s, name)
        if t == "integer":
            return self._integer(s, name)
        if t == "number":
            return self._number(s, name)
        if t == "boolean":
            return self._boolean(name)
        if t == "null":
            return None
        return self._string(s, name)

    def has_value(self, schema: Any, name: str) -> bool:
        """Whether the prompt gives a value for this field (used for optional tool args)."""
        s = self.resolve(schema)
        if isinstance(s.get("enum"), list):
            text_l = self.facts.text.lower()
            return any(str(o).lower() in text_l for o in s["enum"] if len(str(o)) >= 2)
        t = s.get("type")
        kind = t if isinstance(t, str) else "string"
        return value_for(name, kind, self.facts) is not None

    def _object(self, s: dict[str, Any], depth: int) -> dict[str, Any]:
        props = s.get("properties")
        if not isinstance(props, dict):
            return {}
        required = [r for r in s.get("required", []) if isinstance(r, str)]
        out: dict[str, Any] = {}
        for key, sub in props.items():
            if self.tool_mode and key not in required and not self.has_value(sub, key):
                continue
            out[key] = self.gen(sub, key, depth + 1)
        return out

    def _array(self, s: dict[str, Any], name: str, depth: int) -> list[Any]:
        items = s.get("items", {})
        item_schema = self.resolve(items) if isinstance(items, dict) else {}
        lo = int(s.get("minItems", 1) or 0)
        hi = int(s.get("maxItems", max(lo, 3)))
        want = max(lo, min(hi, 1))
        it = item_schema.get("type")
        out: list[Any] = []
        if it == "string" and "enum" not in item_schema:
            pool = self._string_pool(name)
            want = max(lo, min(hi, min(3, len(pool)) or 1))
            for i in range(want):
                out.append(pool[i] if i < len(pool) else f"item-{i + 1}")
            out = [self._fit_string(item_schema, str(v)) for v in out]
        else:
            for _ in range(want):
                out.append(self.gen(item_schema, name, depth + 1))
        if s.get("uniqueItems") and len({repr(v) for v in out}) != len(out):
            out = out[:1]
        return out

    def _string_pool(self, name: str) -> list[str]:
        w = _words_of(name)
        if _has(w, "email", "emails"):
            return list(self.facts.emails)
        if _has(w, "id", "ids", "orders", "order_ids"):
            return list(self.facts.ids)
        if _has(w, "names", "people", "attendees", "customers", "participants"):
            return list(self.facts.names)
        if _has(w, "cities", "locations", "places"):
            return list(self.facts.cities)
        return list(self.facts.words[:3]) or ["general"]

    def _fit_string(self, s: dict[str, Any], v: str) -> str:
        lo = int(s.get("minLength", 0) or 0)
        hi = s.get("maxLength")
        if isinstance(hi, int) and len(v) > hi:
            v = v[:hi]
        if len(v) < lo:
            v = v + "x" * (lo - len(v))
        return v

    def _string(self, s: dict[str, Any], name: str) -> str:
        fmt = s.get("format")
        pattern = s.get("pattern")
        v = value_for(name, "string", self.facts)
        if v is not None and not isinstance(v, str):
            v = str(v)
        if fmt == "email":
            v = v if v and "@" in v else (self.facts.emails[0] if self.facts.emails else "user@example.com")
        elif fmt == "date":
            v = v if v and re.fullmatch(r"\d{4}-\d{2}-\d{2}", v) else (
                self.facts.dates[0] if self.facts.dates else "2025-01-15")
        elif fmt == "date-time":
            d = self.facts.dates[0] if self.facts.dates else "2025-01-15"
            v = f"{d}T09:00:00Z"
        elif fmt == "time":
            v = "09:00:00"
        elif fmt in ("uri", "url"):
            v = self.facts.urls[0] if self.facts.urls else "https://example.com/"
        elif fmt == "uuid":
            v = f"{self.rnd.getrandbits(32):08x}-{self.rnd.getrandbits(16):04x}-4{self.rnd.getrandbits(12):03x}-8{self.rnd.getrandbits(12):03x}-{self.rnd.getrandbits(48):012x}"
        if isinstance(pattern, str) and (v is None or not _search(pattern, v)):
            v = self._pattern_candidate(pattern) or v
        if v is None:
            v = self._default_string(name)
        return self._fit_string(s, v)

    def _pattern_candidate(self, pattern: str) -> str | None:
        cands: list[str] = [*self.facts.ids, *self.facts.emails, *self.facts.dates,
                 *re.findall(r"[^\s,;，。]+", self.facts.text)]
        for c in cands:
            c = c.strip("()[]\"'.,!?")
            if _search(pattern, c):
                return c
        return None

    def _default_string(self, name: str) -> str:
        w = _words_of(name)
        zh = self.facts.lang != "en"
        if _has(w, "status", "state"):
            return "pending"
        if _has(w, "email", "mail"):
            return "user@example.com"
        if _has(w, "phone", "mobile", "tel"):
            return "+1-555-0100"
        if _has(w, "date", "day", "deadline"):
            return self.facts.dates[0] if self.facts.dates else "2025-01-15"
        if _has(w, "currency"):
            return "CNY" if zh else "USD"
        if _has(w, "name", "customer", "person", "user", "contact"):
            return "张伟" if zh else "Alex Chen"
        if _has(w, "city", "location", "destination", "place"):
            return "上海" if zh else "San Francisco"
        if _has(w, "id", "number", "code", "reference"):
            return f"ID-{self.rnd.randint(1000, 9999)}"
        if _has(w, "language", "lang"):
            return "zh" if zh else "en"
        if self.facts.words:
            return self.facts.words[self.rnd.randrange(min(3, len(self.facts.words)))]
        if self.facts.summary:
            return self.facts.summary
        return "未知" if zh else "unknown"

    def _bounds(self, s: dict[str, Any], v: float, integer: bool) -> float:
        lo = s.get("minimum")
        hi = s.get("maximum")
        xlo = s.get("exclusiveMinimum")
        xhi = s.get("exclusiveMaximum")
        step = 1 if integer else 0.01
        if isinstance(lo, (int, float)) and v < lo:
            v = float(lo)
        if isinstance(xlo, (int, float)) and not isinstance(xlo, bool) and v <= xlo:
            v = float(xlo) + step
        if isinstance(hi, (int, float)) and v > hi:
            v = float(hi)
        if isinstance(xhi, (int, float)) and not isinstance(xhi, bool) and v >= xhi:
            v = float(xhi) - step
        return v

    def _integer(self, s: dict[str, Any], name: str) -> int:
        v = value_for(name, "integer", self.facts)
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            v = self._default_number(name, integer=True)
        out = round(self._bounds(s, float(v), True))
        lo = s.get("minimum")
        if isinstance(lo, (int, float)) and out < lo:
            out += 1
        return out

    def _number(self, s: dict[str, Any], name: str) -> float:
        v = value_for(name, "number", self.facts)
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            v = self._default_number(name, integer=False)
        return round(self._bounds(s, float(v), False), 2)

    def _default_number(self, name: str, *, integer: bool) -> float:
        w = _words_of(name)
        if _has(w, "amount", "price", "total", "cost", "fee", "refund", "balance"):
            return float(self.rnd.randint(10, 200)) + (0.0 if integer else 0.99)
        if _has(w, "score", "confidence", "probability", "rating") and not integer:
            return 0.9
        if _has(w, "rating", "stars"):
            return 4.0
        if _has(w, "year"):
            return 2025.0
        return 1.0

    def _boolean(self, name: str) -> bool:
        w = [x for x in _words_of(name) if x not in ("is", "has", "needs", "requires", "should")]
        text_l = self.facts.text.lower()
        if _has(w, "urgent", "urgency", "priority", "escalate", "escalation"):
            return any(c in text_l for c in _ENUM_LEXICON["urgent"])
        if _has(w, "valid", "available", "success", "ok", "in_stock", "stock"):
            return True
        return any(len(x) >= 3 and (stem(x) in self.facts.stems or x in text_l) for x in w)


def _search(pattern: str, value: str) -> bool:
    try:
        return re.search(pattern, value) is not None
    except re.error:
        return True


def is_han(text: str) -> bool:
    return bool(HAN_RE.search(text))


__all__ = ["STOPWORDS", "Facts", "SchemaGen", "choose_enum", "is_han", "value_for"]
