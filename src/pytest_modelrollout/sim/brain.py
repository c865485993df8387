"""How the simulator answers: tool calls, JSON, extractive RAG, support-style text.

The content of a reply depends only on the canonical request (so ``stable``, ``good`` and the
flawed personas start from the same answer); each persona then applies its own transformation
(shorter, longer, wrong language, sloppy JSON, bad tool arguments) decided by a per-request
hash. Nothing here sleeps or touches the network.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from .extract import Facts, SchemaGen, value_for
from .personas import Settings
from .text import (
    HAN_RUN_RE,
    ZH_LEXICON,
    Lang,
    content_words,
    count_tokens,
    detect_language,
    han_bigrams,
    latin_words,
    rng,
    split_sentences,
    stem,
    stems,
    unit,
)
from .wire import Draft, SimRequest, SimToolCall

# ---------------------------------------------------------------------------------------------
# Language of the reply


def reply_language(req: SimRequest, settings: Settings, key: str) -> Lang:
    lang = detect_language(req.prompt or req.user_text)
    p = settings.persona
    if p.wrong_language_rate > 0 and unit("wrong-language", p.name, key) < p.wrong_language_rate:
        if lang == "en":
            return "zh"
        if lang == "zh":
            return "en"
        return "en"  # a mixed prompt accepts zh or mixed replies: English is the wrong one
    return lang


# ---------------------------------------------------------------------------------------------
# Topic words

_ZH_FILLERS = re.compile(r"^(?:你好|您好|请问|我想|我要|帮我|麻烦|能不能|可以|我的|你们的|请|一下|为什么|怎么)+")


def zh_topic(text: str) -> str:
    found = [t for t in ZH_LEXICON if t in text]
    if found:
        found.sort(key=text.index)
        return "和".join(found[:2])
    for run in HAN_RUN_RE.findall(text):
        run = _ZH_FILLERS.sub("", run)
        if len(run) >= 2:
            return run[:6]
    return "这个问题"


def en_topic(text: str) -> str:
    words = [w for w in content_words(text) if w not in _GENERIC_EN]
    if not words:
        return "your request"
    return " ".join(words[:3])


_GENERIC_EN = frozenset(
    ["where", "when", "what", "which", "help", "issue", "problem", "something", "anything", "thing", "things", "today", "still"]
)


def en_terms_in(text: str) -> list[str]:
    seen: dict[str, None] = {}
    for w in latin_words(text):
        if w.lower() not in _GENERIC_EN and len(w) >= 2:
            seen.setdefault(w, None)
    return list(seen)


# ---------------------------------------------------------------------------------------------
# Support-style templates

_INTENTS: dict[str, tuple[str, ...]] = {
    "refund": ("refund", "return", "money back", "exchange", "退款", "退货", "换货", "退钱"),
    "account": ("password", "login", "log in", "sign in", "account", "username", "密码", "登录",
                "账户", "账号", "注册"),
    "billing": ("charge", "invoice", "bill", "payment", "subscription", "扣款", "发票", "付款",
                "账单", "订阅", "收费"),
    "technical": ("error", "crash", "bug", "install", "app", "slow", "not working", "broken",
                  "闪退", "报错", "打不开", "崩溃", "卡", "故障", "无法"),
    "order": ("order", "deliver", "shipping", "ship", "arriv", "package", "parcel", "track",
              "订单", "快递", "物流", "到货", "发货", "配送", "包裹", "什么时候到"),
}

_GREETING_RE = re.compile(r"^\s*(?:hi|hello|hey|good (?:morning|afternoon|evening)|你好|您好|嗨|哈喽)"
                          r"[\s!,.！，。?？]*$", re.IGNORECASE)

_EN: dict[str, list[str]] = {
    "open": [
        "Thanks for reaching out about {topic}.",
        "Happy to help with {topic}.",
        "Thanks for your question about {topic}.",
    ],
    "order": [
        "I have checked the status of order {id}, and it is currently being processed by our warehouse.",
        "Most orders ship within 1-2 business days and arrive within 3-5 business days after shipping.",
        "You can follow the delivery at any time from the Orders page in your account, where the tracking number is shown once the parcel leaves the warehouse.",
        "If the tracking has not updated for more than three days, let us know and we will open an investigation with the carrier.",
    ],
    "refund": [
        "I can help you with a refund for order {id}.",
        "Refunds are accepted within 30 days of delivery as long as the item is unused and in its original packaging.",
        "Once the returned item reaches our warehouse, the refund is issued to your original payment method within 5-7 business days.",
        "You can start the return from the Orders page by choosing the item and selecting Return or refund.",
    ],
    "account": [
        "To regain access to your account, use the Forgot password link on the sign-in page and follow the instructions in the email we send you.",
        "The reset link is valid for 30 minutes, so please use it soon after it arrives.",
        "If the email does not arrive, check your spam folder and make sure the address on the account is correct.",
        "For extra security we recommend turning on two-step verification once you are signed in.",
    ],
    "billing": [
        "I have reviewed the charges related to {topic}.",
        "Charges usually appear on your statement within one to two business days after the payment is confirmed.",
        "You can download every invoice from the Billing section of your account settings.",
        "If you see a charge you do not recognise, reply with the date and amount and we will investigate it right away.",
    ],
    "technical": [
        "Sorry about the trouble with {topic}.",
        "First, please make sure you are using the latest version of the app and restart your device.",
        "If the problem continues, clearing the app cache or reinstalling usually resolves it.",
        "If none of this helps, send us a screenshot of the error message and the time it happened so our engineers can look into it.",
    ],
    "general": [
        "Here is a short overview of {topic}.",
        "The key point is to start from what you need to achieve and check the relevant settings step by step.",
        "Our help center has a detailed guide that walks through the most common questions in a few minutes.",
        "If anything is still unclear, share a bit more detail and I will point you to the exact steps.",
    ],
    "close": [
        "Let me know if there is anything else I can help with.",
        "Feel free to reply if you have any other questions.",
        "I hope this helps, and have a great day.",
    ],
    "more": [
        "To add a little more context, this process is the same on the website and in the mobile app, so you can use whichever is more convenient for you.",
        "Many customers also find it useful to enable email notifications, because every status change is then sent to you automatically without having to check manually.",
        "It is also worth keeping the confirmation email for your records, since it contains the reference number that our support team will ask for.",
        "Please note that during holidays and busy sale periods processing times can be a little longer than usual, although we always try to keep delays to a minimum.",
        "If you prefer to talk to someone directly, our support team is available by chat every day from 8 am to 8 pm and will be glad to walk you through each step.",
        "For completeness, the same steps apply to orders placed with a gift card or store credit, and the amounts are returned to the same balance.",
        "Finally, if you have feedback about how we handled this, we would really appreciate hearing it, because it helps us improve the service for everyone.",
        "As a general tip, keeping your contact details up to date in your profile ensures that you receive every update about your account and orders.",
    ],
}

_ZH: dict[str, list[str]] = {
    "open": [
        "您好，关于您提到的{topic}问题，我来为您说明。",
        "感谢您的咨询，关于{topic}，情况如下。",
        "您好！很高兴为您解答关于{topic}的问题。",
    ],
    "order": [
        "我已为您查询订单{id}，目前仓库正在处理中。",
        "一般情况下，订单会在1到2个工作日内发货，发货后3到5个工作日送达。",
        "您可以随时在“我的订单”页面查看物流信息，包裹出库后会显示快递单号。",
        "如果物流信息超过三天没有更新，请告诉我们，我们会联系快递公司进行核查。",
    ],
    "refund": [
        "我可以帮您处理订单{id}的退款。",
        "商品签收后30天内，在未使用且包装完好的情况下可以申请退货退款。",
        "仓库收到退回的商品后，退款会在5到7个工作日内原路退回到您的支付账户。",
        "您可以在“我的订单”页面选择对应商品，点击“申请退款”即可发起。",
    ],
    "account": [
        "如果无法登录，请在登录页面点击“忘记密码”，按照邮件中的提示重置密码。",
        "重置链接的有效期为30分钟，请在收到后尽快使用。",
        "如果没有收到邮件，请检查垃圾邮件文件夹，并确认账户绑定的邮箱地址是否正确。",
        "为了账户安全，建议登录后开启两步验证。",
    ],
    "billing": [
        "我已核对与{topic}相关的扣款记录。",
        "付款确认后，扣款通常会在1到2个工作日内显示在账单上。",
        "您可以在账户设置的“账单”页面下载所有发票。",
        "如果发现不认识的扣款，请回复扣款日期和金额，我们会立即为您核查。",
    ],
    "technical": [
        "很抱歉{topic}给您带来了不便。",
        "请先确认应用已更新到最新版本，并尝试重启设备。",
        "如果问题仍然存在，清除应用缓存或重新安装通常可以解决。",
        "如果以上方法都无效，请把报错截图和发生时间发给我们，技术团队会尽快排查。",
    ],
    "general": [
        "下面为您简单介绍一下{topic}。",
        "建议先明确您的具体需求，再按照步骤逐项检查相关设置。",
        "我们的帮助中心有详细的图文指南，几分钟就能看完常见问题的处理方法。",
        "如果还有不清楚的地方，可以补充一些细节，我会告诉您具体的操作步骤。",
    ],
    "close": [
        "如果还有其他问题，欢迎随时联系我们。",
        "希望以上信息对您有帮助，祝您生活愉快！",
        "如有任何疑问，请随时回复。",
    ],
    "more": [
        "补充说明一下，网页端和手机应用的操作流程是完全一样的，您可以选择自己方便的方式进行操作。",
        "很多用户会开启消息通知，这样每次状态变化都会自动推送给您，不需要反复手动查询。",
        "建议您保留确认邮件，其中包含参考编号，联系客服时我们可能会需要这个编号。",
        "需要提醒的是，在节假日和大促期间，处理时间可能会比平时稍长一些，我们会尽量减少延误。",
        "如果您更希望直接沟通，我们的在线客服每天早上8点到晚上8点在线，可以一步一步协助您完成操作。",
        "另外，使用礼品卡或店铺余额支付的订单也适用同样的流程，金额会退回到原来的余额中。",
        "最后，如果您对本次服务有任何意见或建议，非常欢迎告诉我们，这能帮助我们持续改进服务质量。",
        "一个小建议：请及时更新个人资料中的联系方式，以确保您能收到关于账户和订单的每一条通知。",
    ],
}

# Chinese-led code-switching with a few English terms: passes "mixed" (both scripts), "zh"
# (Latin share < 1/3) and "same_as_prompt" for mixed prompts.
_MIXED: dict[str, list[str]] = {
    "open": [
        "好的，关于你提到的 {terms}，我来帮你看一下。",
        "收到！关于 {terms} 这个问题，我整理了几点建议。",
        "关于 {terms}，下面是我的一些想法。",
    ],
    "body": [
        "首先建议检查一下 {term} 相关的设置，确认配置是正确的。",
        "一般来说，重启一下 app 或者清除缓存就能解决大部分问题。",
        "如果还是不行，可以提交一个 ticket，我们的支持团队会尽快跟进。",
        "你也可以在控制台的 dashboard 页面查看最新的状态。",
    ],
    "close": [
        "有其他问题随时告诉我，happy to help！",
        "希望对你有帮助，有问题再联系我。",
    ],
    "more": [
        "另外补充一点，网页端和手机 app 的操作流程是一样的，选择你方便的方式就行。",
        "建议打开邮件通知，这样每次状态更新都会自动推送给你，不用反复手动 check。",
        "记得保留确认邮件，里面有参考编号，联系客服的时候会用到。",
        "节假日和大促期间处理时间可能会稍微长一点，请多包涵。",
        "如果想直接沟通，我们的在线客服每天早上八点到晚上八点都在，可以一步一步帮你。",
        "顺便说一下，请保持个人资料里的联系方式是最新的，这样不会错过任何 update。",
    ],
}


def detect_intent(text: str) -> str:
    low = text.lower()
    best, best_n = "general", 0
    for intent, cues in _INTENTS.items():
        n = sum(1 for c in cues if c in low)
        if n > best_n:
            best, best_n = intent, n
    return best


def support_text(req: SimRequest, lang: Lang, facts: Facts, r: random.Random) -> list[str]:
    """The stable support-style answer as a list of sentences (opener, body, closer)."""
    prompt = req.prompt
    if _GREETING_RE.match(prompt):
        return {"en": ["Hello! How can I help you today?"],
                "zh": ["您好！请问有什么可以帮您？"],
                "mixed": ["Hi！请问有什么可以 help 你的？"]}[lang]
    intent = detect_intent(prompt)
    oid = facts.ids[0] if facts.ids else ""
    if lang == "mixed":
        terms_list = en_terms_in(prompt) or ["this issue"]
        terms = " / ".join(terms_list[:2])
        bank = _MIXED
        out = [r.choice(bank["open"]).format(terms=terms)]
        body = list(bank["body"])
        out.append(body[0].format(term=terms_list[0]))
        out.append(body[1 + r.randrange(len(body) - 1)].format(term=terms_list[0]))
        out.append(r.choice(bank["close"]))
        return out
    bank = _EN if lang == "en" else _ZH
    if lang == "en":
        topic = en_topic(prompt)
        if detect_language(prompt) != "en":  # wrong-language reply: use translated cue words
            cues = sorted({e for t, es in ZH_LEXICON.items() if t in prompt for e in es[:1]})
            topic = " and ".join(cues[:2]) or "your request"
    else:
        topic = zh_topic(prompt)
        brands = en_terms_in(prompt)[:2]
        if brands and detect_language(prompt) == "zh":
            topic = f"{' '.join(brands)} {topic}"
        if detect_language(prompt) == "en":
            words = content_words(prompt)
            topic = "您的问题"
            for t, es in ZH_LEXICON.items():
                if any(stem(w) in {stem(e) for e in es} for w in words):
                    topic = t
                    break
    picked: list[str] = []
    for s in bank[intent]:
        if "{id}" in s and not oid:
            continue
        picked.append(s)
        if len(picked) >= 3:
            break
    out = [r.choice(bank["open"]).format(topic=topic)]
    out += [s.format(id=oid, topic=topic) for s in picked]
    out.append(r.choice(bank["close"]))
    return out


def _join(sentences: list[str], lang: Lang) -> str:
    if lang == "en":
        return " ".join(sentences)
    return "".join(s if not s[-1:].isalpha() else s + " " for s in sentences).strip()


def adjust_length(sentences: list[str], lang: Lang, settings: Settings, key: str,
                  *, droppable_tail: bool = True, append: bool = False) -> str:
    """Apply the persona's length factor to a text made of sentences."""
    base = _join(sentences, lang)
    factor = settings.persona.length_factor
    if factor < 1.0 and len(sentences) >= 3 and droppable_tail:
        # drop the closing pleasantry (more sentences only when much shorter is asked)
        kept = sentences[:-1]
        while len(kept) >= 3 and len(_join(kept, lang)) > factor * len(base) * 1.3:
            kept = kept[:-1]
        return _join(kept, lang)
    if factor > 1.0:
        target = factor * len(base) * (0.95 + 0.1 * unit("verbose", key))
        extra = list((_EN if lang == "en" else _ZH if lang == "zh" else _MIXED)["more"])
        r = rng("verbose-order", key)
        r.shuffle(extra)
        out = list(sentences)
        i = 0
        while len(_join(out, lang)) < target:
            pos = len(out) if append or len(out) <= 1 else len(out) - 1
            out.insert(pos, extra[i % len(extra)])
            i += 1
            if i > 60:
                break
        return _join(out, lang)
    return base


# ---------------------------------------------------------------------------------------------
# RAG

_CTX_MARK = re.compile(
    r"^[ \t#*]*(?:context|contexts|上下文|资料|参考资料|背景资料|背景|知识库|文档|documents?|passages?|"
    r"sources?|background|knowledge|reference|references|retrieved(?: documents?)?)[ \t*]*[:：]",
    re.IGNORECASE | re.MULTILINE,
)
_Q_MARK = re.compile(r"^[ \t#*]*(?:question|query|q|问题|用户问题|提问)[ \t*]*[:：]",
                     re.IGNORECASE | re.MULTILINE)
_TAG_CTX = re.compile(r"<(context|documents?|passages?|资料)>(.*?)</\1>", re.DOTALL | re.IGNORECASE)
_PASSAGE_LINE = re.compile(r"^\s*(?:\[\d+\]|passage \d+[:：]|document \d+[:：]|doc \d+[:：])",
                           re.IGNORECASE | re.MULTILINE)


def find_context(req: SimRequest) -> tuple[str, str] | None:
    """(context, question) when the request carries a context section, else None."""
    sources = [("system", req.system)] + [
        ("user", str(m["text"])) for m in req.messages if m["role"] == "user"
        and not m.get("tool_result")
    ]
    contexts: list[str] = []
    question = ""
    for where, text in sources:
        if not text:
            continue
        m_tag = _TAG_CTX.search(text)
        m_ctx = _CTX_MARK.search(text)
        if m_tag:
            contexts.append(m_tag.group(2))
            rest = text[: m_tag.start()] + text[m_tag.end():]
            if where == "user":
                mq = _Q_MARK.search(rest)
                question = (rest[mq.end():] if mq else rest).strip() or question
        elif m_ctx:
            after = text[m_ctx.end():]
            mq = _Q_MARK.search(after)
            if mq:
                contexts.append(after[: mq.start()])
                if where == "user" or not question:
                    question = after[mq.end():].strip()
            else:
                contexts.append(after)
                before = text[: m_ctx.start()].strip()
                if where == "user" and before:
                    question = before
        elif where == "user" and len(_PASSAGE_LINE.findall(text)) >= 2:
            mq = _Q_MARK.search(text)
            contexts.append(text[: mq.start()] if mq else text)
            if mq:
                question = text[mq.end():].strip()
        else:
            mq = _Q_MARK.search(text)
            if mq and where == "user":
                question = text[mq.end():].strip()
    if not contexts:
        return None
    if not question:
        prompt = req.prompt
        q_lines = [ln for ln in prompt.splitlines() if ln.strip()]
        question = q_lines[-1] if q_lines else prompt
    return "\n".join(contexts), question.strip()


_NOT_FOUND = {
    "en": "The context does not contain this information.",
    "zh": "资料中没有相关信息。",
    "mixed": "资料中没有相关信息 (the context does not contain this information)。",
}


def rag_answer(context: str, question: str) -> str | None:
    """The best-overlapping context sentence(s), or None when nothing overlaps."""
    sents = [s for s in split_sentences(context) if len(s.strip()) > 1]
    sents = [re.sub(r"^\s*(?:\[\d+\]|[-*•]|\d+[.)])\s*", "", s) for s in sents]
    if not sents:
        return None
    q_stems = stems(question) - {"context", "document", "passage", "资料"}
    q_grams = han_bigrams(question)
    if not q_stems and not q_grams:
        return None
    df: dict[str, int] = {}
    sent_feats: list[tuple[set[str], set[str]]] = []
    for s in sents:
        st, gr = stems(s), han_bigrams(s)
        sent_feats.append((st, gr))
        for x in st | gr:
            df[x] = df.get(x, 0) + 1
    best_i, best = -1, 0.0
    for i, (st, gr) in enumerate(sent_feats):
        shared = (st & q_stems) | (gr & q_grams)
        score = sum(1.0 + 1.0 / df[x] for x in shared)
        if score > best:
            best_i, best = i, score
    if best_i < 0 or best < 1.0:
        return None
    return sents[best_i].strip()


# ---------------------------------------------------------------------------------------------
# JSON

_JSON_CUE = re.compile(r"\bjson\b", re.IGNORECASE)
_KEYS_RE = re.compile(
    r"(?:keys?|fields?|properties|attributes|字段|键)\s*(?:named|called|of|包括|为|是)?\s*[:：]?\s*"
    r"((?:[`\"']?[A-Za-z_][A-Za-z0-9_]*[`\"']?(?:\s*(?:,|、|，|and|和|or)\s*|\s+)?){1,12})",
    re.IGNORECASE,
)
_QUOTED_IDENT = re.compile(r"[`\"']([A-Za-z_][A-Za-z0-9_]*)[`\"']")
_NOT_KEYS = frozenset({"json", "json_object", "json_schema", "and", "or", "only", "with", "the",
                       "a", "an", "in", "as", "named", "called", "true", "false", "null"})


def wants_json(req: SimRequest) -> bool:
    if req.response_format and req.response_format.get("type") in ("json_object", "json_schema"):
        return True
    return bool(_JSON_CUE.search(req.system) or _JSON_CUE.search(req.prompt))


def requested_schema(req: SimRequest) -> dict[str, Any] | None:
    rf = req.response_format or {}
    if rf.get("type") == "json_schema":
        js = rf.get("json_schema")
        if isinstance(js, dict):
            sch = js.get("schema", js if "properties" in js or "type" in js else None)
            if isinstance(sch, dict):
                return sch
        if isinstance(rf.get("schema"), dict):
            return dict(rf["schema"])
    for text in (req.system, req.prompt):
        sch = embedded_schema(text)
        if sch is not None:
            return sch
    return None


def _json_blocks(text: str) -> list[str]:
    out: list[str] = []
    depth = 0
    start = -1
    in_str = False
    esc = False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"' and depth > 0:
            in_str = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                out.append(text[start: i + 1])
    return out


def embedded_schema(text: str) -> dict[str, Any] | None:
    if "{" not in text:
        return None
    for block in _json_blocks(text):
        try:
            obj = json.loads(block)
        except ValueError:
            continue
        if isinstance(obj, dict) and (
            obj.get("type") == "object" or isinstance(obj.get("properties"), dict)
        ):
            return obj
    return None


def requested_keys(req: SimRequest) -> list[str]:
    keys: list[str] = []
    for text in (req.system, req.prompt):
        for m in _KEYS_RE.finditer(text):
            for ident in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", m.group(1)):
                if ident.lower() not in _NOT_KEYS and ident not in keys and (
                    "_" in ident or ident.islower()
                ):
                    keys.append(ident)
        for ident in _QUOTED_IDENT.findall(text):
            if ident.lower() not in _NOT_KEYS and ident not in keys:
                keys.append(ident)
    return keys[:12]


def _schema_for_key(key: str) -> dict[str, Any]:
    low = key.lower()
    if low.startswith(("is_", "has_")) or low in ("urgent", "valid", "success"):
        return {"type": "boolean"}
    if any(t in low for t in ("amount", "price", "total", "cost", "fee", "balance")):
        return {"type": "number"}
    if any(t in low for t in ("count", "quantity", "qty", "age", "days", "nights")):
        return {"type": "integer"}
    if low in ("tags", "keywords", "items", "topics", "entities"):
        return {"type": "array", "items": {"type": "string"}}
    return {"type": "string"}


def json_object(req: SimRequest, lang: Lang, facts: Facts, key: str, answer: str) -> Any:
    r = rng("json", key)
    schema = requested_schema(req)
    if schema is not None:
        return SchemaGen(schema, facts, r).gen(schema)
    keys = requested_keys(req)
    if keys:
        props = {k: _schema_for_key(k) for k in keys}
        sch = {"type": "object", "properties": props, "required": keys}
        obj = SchemaGen(sch, facts, r).gen(sch)
        for k in keys:
            if k.lower() in ("answer", "reply", "response") and isinstance(obj.get(k), str):
                obj[k] = answer
        return obj
    return {"answer": answer, "language": lang}


def sloppy(text: str, settings: Settings, key: str, lang: Lang) -> str:
    p = settings.persona
    u = unit("sloppy-json", p.name, key)
    if u < p.fence_rate:
        return f"```json\n{text}\n```"
    u -= p.fence_rate
    if u < p.prose_rate:
        if lang == "en":
            return f"Sure! Here is the JSON you asked for:\n{text}\nLet me know if you need changes."
        return f"好的，以下是您要的 JSON：\n{text}\n如需修改请告诉我。"
    u -= p.prose_rate
    if u < p.broken_json_rate:
        if unit("broken-kind", key) < 0.5:
            idx = text.rfind("}")
            return text[:idx].rstrip() + ",\n}" + text[idx + 1:]
        return text[: max(1, int(len(text) * 0.7))]
    return text


# ---------------------------------------------------------------------------------------------
# Tools

_TOOL_STOP = frozenset(
    ["current", "information", "details", "detail", "given", "specified", "return", "returns", "function", "tool", "data", "based", "value", "values", "user", "specific", "provided", "using", "used", "look"]
)


def _tool_words(tool: dict[str, Any]) -> tuple[set[str], set[str]]:
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", tool["name"]).replace("_", " ").replace("-", " ")
    text = f"{name} {tool.get('description', '')}"
    st = {s for s in stems(text) if s not in _TOOL_STOP}
    st |= {stem(w) for w in name.lower().split() if len(w) >= 3 and w not in ("get",)}
    return st, han_bigrams(text)


def choose_tool(req: SimRequest, facts: Facts) -> dict[str, Any] | None:
    tools = req.tools
    if not tools or req.tool_choice == "none" or req.last_is_tool_result:
        return None
    if req.tool_choice not in (None, "required", "any"):
        for t in tools:
            if t["name"] == req.tool_choice:
                return t
    prompt = req.prompt
    p_stems = stems(prompt)
    p_grams = han_bigrams(prompt)
    best: tuple[float, int] | None = None
    for i, t in enumerate(tools):
        st, gr = _tool_words(t)
        score = float(len(st & p_stems)) + float(len(gr & p_grams))
        params = t.get("parameters") or {}
        req_fields = [r for r in params.get("required", []) if isinstance(r, str)]
        props = params.get("properties") or {}
        hits = 0
        for r_name in req_fields:
            sub = props.get(r_name) if isinstance(props, dict) else None
            kind = sub.get("type") if isinstance(sub, dict) else "string"
            if value_for(r_name, kind if isinstance(kind, str) else "string", facts) is not None:
                hits += 1
        if score > 0 or (req_fields and hits == len(req_fields) and hits > 0):
            score += 0.5 * hits
        if best is None or score > best[0]:
            best = (score, i)
    if best is None:
        return None
    if best[0] <= 0 and req.tool_choice not in ("required", "any"):
        return None
    return tools[best[1]]


def tool_arguments(tool: dict[str, Any], facts: Facts, key: str) -> dict[str, Any]:
    schema = tool.get("parameters") or {"type": "object", "properties": {}}
    gen = SchemaGen(schema, facts, rng("tool-args", key, tool["name"]), tool_mode=True)
    out = gen.gen(schema)
    return out if isinstance(out, dict) else {}


def break_arguments(tool: dict[str, Any], args: dict[str, Any], settings: Settings,
                    key: str) -> tuple[dict[str, Any] | None, str]:
    """Make the arguments invalid for the tool's schema (bad-tools persona)."""
    p = settings.persona
    schema = tool.get("parameters") or {}
    gen = SchemaGen(schema, Facts.from_text(""), rng("noop"))
    props = {k: gen.resolve(v) for k, v in (schema.get("properties") or {}).items()}
    required = [r for r in schema.get("required", []) if isinstance(r, str) and r in args]
    r = rng("bad-tools-kind", p.name, key)
    raw_json = json.dumps(args, ensure_ascii=False)
    if unit("bad-args-json", p.name, key) < p.bad_args_json_share:
        return None, raw_json[:-1] if raw_json.endswith("}") and len(raw_json) > 2 else "{'" + raw_json
    options: list[str] = []
    if required:
        options.append("missing")
    typed = [k for k in args if isinstance(props.get(k), dict) and
             (props[k].get("type") or props[k].get("anyOf") or props[k].get("enum"))]
    if typed:
        options.append("type")
    enums = [k for k in args if isinstance(props.get(k), dict) and isinstance(props[k].get("enum"), list)]
    if enums:
        options.append("enum")
    if not options:
        return None, raw_json[:-1] if len(raw_json) > 2 else "{"
    kind = options[r.randrange(len(options))]
    bad = dict(args)
    if kind == "missing":
        del bad[required[r.randrange(len(required))]]
    elif kind == "enum":
        k = enums[r.randrange(len(enums))]
        bad[k] = f"{bad[k]}_unknown" if isinstance(bad[k], str) else "unknown"
    else:
        k = typed[r.randrange(len(typed))]
        v = bad[k]
        if isinstance(v, bool):
            bad[k] = "yes" if v else "no"
        elif isinstance(v, (int, float)):
            bad[k] = f"{v}"
        elif isinstance(v, str):
            bad[k] = {"value": v} if any(c.isdigit() for c in v) is False else [v]
        else:
            bad[k] = str(v)
    return bad, json.dumps(bad, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# The whole reply


def _tool_result_text(req: SimRequest, lang: Lang) -> str:
    result = str(req.messages[-1]["text"]).strip()
    snippet = result if len(result) <= 300 else result[:300] + "…"
    if lang == "en":
        return f"Here is what I found: {snippet} Let me know if you need anything else."
    if lang == "zh":
        return f"查询结果如下：{snippet}。如果还有其他需要，请告诉我。"
    return f"查询 result 如下：{snippet}。还有其他 question 随时告诉我。"


_SUMMARY_CUE = re.compile(r"\b(?:summari[sz]e|summary|tl;?dr)\b|总结|概括|摘要|归纳", re.IGNORECASE)
_CLASSIFY_CUE = re.compile(
    r"\b(?:classify|categori[sz]e|sentiment|label)\b|分类|情感|类别|归类", re.IGNORECASE
)
_OPTIONS_RE = re.compile(
    r"(?:one of|options?|labels?|categories|choose from|从)[^:：\n]*[:：]?\s*"
    r"([A-Za-z_\u4e00-\u9fff\-]+(?:\s*(?:,|/|\||、|，|or|或)\s*[A-Za-z_\u4e00-\u9fff\-]+){1,12})",
    re.IGNORECASE,
)


def summary_text(req: SimRequest, lang: Lang) -> list[str] | None:
    """Extractive summary: the leading sentences of the text to summarise."""
    prompt = req.prompt
    if not (_SUMMARY_CUE.search(prompt) or _SUMMARY_CUE.search(req.system)):
        return None
    body = prompt
    m = re.search(r"[:：]\s*\n?", prompt)
    if m and len(prompt) - m.end() > 40:
        body = prompt[m.end():]
    elif "\n" in prompt.strip():
        body = prompt.split("\n", 1)[1]
    sents = [x for x in split_sentences(body) if not _SUMMARY_CUE.search(x) or len(x) > 80]
    if not sents:
        return None
    picked = sents[:2] if len(sents) > 3 else sents[:1]
    prefix = {"en": "Summary: ", "zh": "总结：", "mixed": "Summary："}[lang]
    if detect_language(" ".join(picked)) != lang and lang != "mixed":
        return None  # wrong-language persona: fall back to a templated answer
    return [prefix + picked[0], *picked[1:]]


def classify_text(req: SimRequest, facts: Facts) -> str | None:
    text = f"{req.system}\n{req.prompt}"
    if not _CLASSIFY_CUE.search(text):
        return None
    m = _OPTIONS_RE.search(text)
    if not m:
        return None
    options = [o.strip() for o in re.split(r"\s*(?:,|/|\||、|，|\bor\b|或)\s*", m.group(1)) if o.strip()]
    if len(options) < 2:
        return None
    from .extract import choose_enum

    subject = Facts.from_text(req.prompt.replace(m.group(0), " "))
    return str(choose_enum("label", options, subject))


def compose(req: SimRequest, settings: Settings) -> Draft:
    key = req.key()
    facts = Facts.from_text(req.user_text)
    lang = reply_language(req, settings, key)
    p = settings.persona

    tool = choose_tool(req, facts)
    if tool is not None:
        args: dict[str, Any] | None = tool_arguments(tool, facts, key)
        raw = json.dumps(args, ensure_ascii=False)
        if p.bad_tool_rate > 0 and unit("bad-tools", p.name, key) < p.bad_tool_rate:
            args, raw = break_arguments(tool, args or {}, settings, key)
            if args is not None:
                try:
                    args = json.loads(raw)
                except ValueError:
                    args = None
        call = SimToolCall(name=tool["name"], arguments=args, raw_arguments=raw,
                           id="call_" + key[:20])
        return Draft(text="", tool_calls=[call], finish="tool_calls", mode="tool")

    if req.last_is_tool_result:
        return Draft(text=_tool_result_text(req, lang), mode="tool_result")

    r = rng("content", key)
    ctx = find_context(req)
    answer_sents: list[str]
    mode = "text"
    if ctx is not None:
        context, question = ctx
        found = rag_answer(context, question)
        mode = "rag"
        if found is None:
            answer_sents = [_NOT_FOUND[lang]]
        elif lang == detect_language(found) or (lang != "en" and detect_language(found) != "en"):
            prefix = {"en": "Based on the context: ", "zh": "根据资料：", "mixed": "根据 context："}[lang]
            answer_sents = [prefix + found] if p.length_factor >= 1.0 else [found]
        else:  # wrong-language persona: paraphrase in the other language
            answer_sents = ([f"According to the provided material, the relevant passage answers "
                             f"your question about {en_topic(question) if detect_language(question) == 'en' else 'this topic'}."]
                            if lang == "en" else ["根据提供的资料，相关段落已经回答了您的问题，请参考上文中的说明。"])
    else:
        label = None if wants_json(req) else classify_text(req, facts)
        if label is not None:
            return Draft(text=label, mode="label")
        summary = summary_text(req, lang)
        if summary is not None:
            mode = "summary"
            answer_sents = summary
        else:
            answer_sents = support_text(req, lang, facts, r)

    if wants_json(req):
        short = _join(answer_sents[:2] if mode == "text" else answer_sents, lang)
        if p.length_factor > 1.0:
            short = adjust_length(answer_sents, lang, settings, key)
        obj = json_object(req, lang, facts, key, short)
        text = json.dumps(obj, ensure_ascii=False, indent=2)
        text = sloppy(text, settings, key, lang)
        return Draft(text=text, mode="json")

    if mode in ("rag", "summary"):
        if p.length_factor > 1.0:
            text = adjust_length(answer_sents, lang, settings, key, append=True)
        else:
            text = _join(answer_sents, lang)
        return Draft(text=text, mode="rag")
    return Draft(text=adjust_length(answer_sents, lang, settings, key), mode="text")


def apply_max_tokens(draft: Draft, max_tokens: int | None) -> Draft:
    """Cut a text reply at ``max_tokens`` (finish ``length``), as real models do."""
    if max_tokens is None or draft.tool_calls or count_tokens(draft.text) <= max_tokens:
        return draft
    text = draft.text
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(text[:mid]) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return Draft(text=text[:lo], tool_calls=[], finish="length", mode=draft.mode)


__all__ = ["apply_max_tokens", "compose", "detect_intent", "find_context", "rag_answer", "reply_language"]
