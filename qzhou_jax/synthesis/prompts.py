"""Prompts (English and Chinese, chosen by the input's language) and the JSON schema each generator asks for.

The prompts state the paper's constraints (docs/recipe.md section 4) so the model aims for them; checks.py enforces
them. Every prompt is a pure function of its inputs, so a request is a pure function of (item, attempt).
"""
from __future__ import annotations

import json

from qzhou_jax.synthesis import checks

GENERATORS = ("paraphrase", "augment", "hard_negatives")
NEGATIVE_KINDS = ("inadequate", "irrelevant_information", "another_aspect")


def _object(properties: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": properties, "required": required or list(properties),
            "additionalProperties": False}


_STR = {"type": "string"}
SCHEMAS = {
    "paraphrase": _object({"rewrites": {"type": "array", "items": _object({"query": _STR, "positive": _STR})}}),
    "augment": _object({"samples": {"type": "array",
                                    "items": _object({"query": _STR, "positive": _STR, "negative": _STR})}}),
    "hard_negatives": _object({"negatives": {"type": "array", "items": _object(
        {"text": _STR, "kind": {"type": "string", "enum": list(NEGATIVE_KINDS)}})}}),
}
LIST_FIELD = {"paraphrase": "rewrites", "augment": "samples", "hard_negatives": "negatives"}


def response_format(generator: str) -> dict:
    return {"type": "json_schema", "json_schema": {"name": generator, "schema": SCHEMAS[generator], "strict": True}}


_SYSTEM = {
    "en": "You generate training data for a text embedding model. Answer with one JSON object only, no prose.",
    "zh": "你为文本向量模型生成训练数据。只输出一个 JSON 对象，不要任何其他文字。",
}

_TASK = {
    ("paraphrase", "en"): (
        "Rewrite the query and the passage below {n} times. Each rewrite keeps the meaning, the language (English) "
        "and the style; its length stays within 15% of the original; its wording differs from the original by more "
        "than {sent}% of the words for a sentence and more than {para}% for a paragraph. The {n} rewrites must "
        "differ from each other."),
    ("paraphrase", "zh"): (
        "将下面的查询和段落改写 {n} 次。每次改写保持原意、语言（中文）和风格；长度与原文相差不超过 15%；"
        "措辞与原文的差异：句子超过 {sent}%，段落超过 {para}%。{n} 个改写之间也必须互不相同。"),
    ("augment", "en"): (
        "Write {n} new samples on a neighbouring topic of the query and passage below (transfer or extend the topic; "
        "do not merely rewrite). Each sample has a query, a positive passage that fully answers it, and a hard "
        "negative passage that looks relevant but is worse: inadequate, carrying irrelevant information, or about "
        "another aspect of the topic. Keep the language (English) and style; the positive and the negative each "
        "stay within 20% of the original passage's length."),
    ("augment", "zh"): (
        "围绕下面查询和段落的相邻主题写 {n} 条新样本（主题迁移或扩展，不能只是改写）。每条包含：一个查询；"
        "一个完整回答该查询的正例段落；一个看似相关但更差的难负例段落（回答不充分、包含无关信息，或讲的是该主题"
        "的另一个方面）。保持语言（中文）和风格；正例和负例的长度都与原段落相差不超过 20%。"),
    ("hard_negatives", "en"): (
        "Write {n} hard negative passages for the query below: each looks relevant and imitates the positive "
        "passage's style, structure, length (within 20%), language (English) and domain expertise, but is worse "
        "than the positive in one way (kind): \"inadequate\" (does not fully answer), \"irrelevant_information\" "
        "(carries information that does not answer), or \"another_aspect\" (about another aspect of the topic). "
        "Never copy the positive; the {n} negatives must differ from each other."),
    ("hard_negatives", "zh"): (
        "为下面的查询写 {n} 个难负例段落：每个看起来相关，模仿正例段落的风格、结构、长度（相差不超过 20%）、"
        "语言（中文）和专业程度，但在以下某一方面比正例差（kind）：\"inadequate\"（回答不充分）、"
        "\"irrelevant_information\"（包含无关信息）或 \"another_aspect\"（讲主题的另一个方面）。"
        "不要照抄正例；{n} 个负例之间互不相同。"),
}

_FORMAT = {
    "en": "Answer as JSON matching this schema:\n{schema}",
    "zh": "按以下 JSON schema 输出：\n{schema}",
}
_FIELDS = {
    "en": {"query": "Query", "positive": "Positive passage", "avoid": "Already accepted (do not repeat)"},
    "zh": {"query": "查询", "positive": "正例段落", "avoid": "已接受的结果（不要重复）"},
}


def messages(generator: str, query: str, positive: str, n: int, avoid: list[str] = ()) -> list[dict]:
    """Chat messages asking for `n` outputs for (query, positive) in the positive's language; `avoid` lists what
    earlier attempts already produced for this item, so a retry asks for something new."""
    if generator not in GENERATORS:
        raise ValueError(f"unknown generator {generator!r}; expected one of {GENERATORS}")
    lang = checks.language(positive)
    names = _FIELDS[lang]
    task = _TASK[(generator, lang)].format(n=n, sent=int(checks.MIN_EDIT_SENTENCE * 100),
                                           para=int(checks.MIN_EDIT_PARAGRAPH * 100))
    parts = [task, f"{names['query']}: {query}", f"{names['positive']}: {positive}"]
    if avoid:
        parts.append(names["avoid"] + ":\n" + "\n".join(f"- {a}" for a in avoid))
    parts.append(_FORMAT[lang].format(schema=json.dumps(SCHEMAS[generator], ensure_ascii=False)))
    return [{"role": "system", "content": _SYSTEM[lang]}, {"role": "user", "content": "\n\n".join(parts)}]
