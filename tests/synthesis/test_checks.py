"""Every constraint accepts what it should and rejects what it should, with its reason."""
import random

import pytest

from qzhou_jax.synthesis import checks as c


def brute_levenshtein(a, b):
    """Plain dynamic programme: the reference the rapidfuzz-based edit ratio must match."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def words(n, prefix="w"):
    return " ".join(f"{prefix}{i}" for i in range(n))


def test_tokens_words_and_cjk_characters():
    assert c.tokens("Hello, World! 你好 abc-12") == ["hello", "world", "你", "好", "abc", "12"]
    assert c.normalise("  Hello,   WORLD!! ") == c.normalise("hello world")


def test_edit_ratio_matches_brute_force():
    rng = random.Random(0)
    vocab = ["a", "b", "c", "d", "e"]
    for _ in range(200):
        a = [rng.choice(vocab) for _ in range(rng.randrange(0, 12))]
        b = [rng.choice(vocab) for _ in range(rng.randrange(0, 12))]
        expected = brute_levenshtein(a, b) / max(len(a), len(b), 1)
        assert c.edit_ratio(a, b) == pytest.approx(expected)
    assert c.edit_ratio("the cat sat on the mat", "the dog sat on the mat") == pytest.approx(1 / 6)


def test_language():
    assert c.language("What is the capital of France?") == "en"
    assert c.language("北京是中国的首都") == "zh"
    assert c.language("北京 is the capital") == "zh"        # 2 CJK of 5 tokens: 0.4 >= 0.3
    assert c.language("北京 is the capital of China") == "en"  # 2 of 7: 0.29
    assert c.check_language("北京是首都", "Beijing is the capital") == c.LANGUAGE
    assert c.check_language("Paris is nice", "Beijing is the capital") is None


def test_language_share_boundary():
    # 3 CJK characters + 7 words: share 0.3 -> zh; 2 + 8: 0.2 -> en
    assert c.language("中文字 " + words(7)) == "zh"
    assert c.language("中文 " + words(8)) == "en"


def test_paragraph():
    assert not c.is_paragraph("What is the capital of France?")
    assert c.is_paragraph("Paris is the capital. It is large.")
    assert c.is_paragraph("北京是首都。它很大。")
    assert not c.is_paragraph("北京是首都。")
    assert c.min_edit_ratio("One sentence.") == c.MIN_EDIT_SENTENCE
    assert c.min_edit_ratio("One. Two.") == c.MIN_EDIT_PARAGRAPH


@pytest.mark.parametrize("tol", [0.15, 0.20])
def test_length_ratio_bounds(tol):
    ref = words(100)
    lo, hi = round(100 * (1 - tol)), round(100 * (1 + tol))
    assert c.check_length(words(lo), ref, tol) is None
    assert c.check_length(words(hi), ref, tol) is None
    assert c.check_length(words(lo - 1), ref, tol) == c.LENGTH
    assert c.check_length(words(hi + 1), ref, tol) == c.LENGTH


def _replace(text_words, k):
    """The first k of the words replaced: edit distance exactly k."""
    return " ".join([f"new{i}" for i in range(k)] + text_words[k:])


def test_rewrite_threshold_sentence_and_paragraph():
    sentence = [f"s{i}" for i in range(10)]
    original = " ".join(sentence)
    assert c.check_rewritten(_replace(sentence, 3), original) == c.TOO_SIMILAR      # 0.3: not MORE than 30%
    assert c.check_rewritten(_replace(sentence, 4), original) is None               # 0.4
    para = [f"p{i}" for i in range(10)]
    paragraph = " ".join(para[:5]) + ". " + " ".join(para[5:]) + "."
    assert c.check_rewritten(_replace(para, 2), paragraph) == c.TOO_SIMILAR         # 0.2
    assert c.check_rewritten(_replace(para, 3), paragraph) is None                  # 0.3 > 0.2


def test_near_duplicate():
    base = [f"t{i}" for i in range(20)]
    assert c.near_duplicate(" ".join(base), " ".join(base).upper() + "!")
    assert c.near_duplicate(_replace(base, 2), " ".join(base))      # 0.10
    assert not c.near_duplicate(_replace(base, 3), " ".join(base))  # 0.15
    assert c.check_distinct("a b c", ["x y z", "A, b. c"]) == c.NEAR_DUPLICATE
    assert c.check_distinct("a b c", ["x y z"]) is None


def test_check_paraphrase_each_reason():
    q_words, p_words = [f"q{i}" for i in range(10)], [f"p{i}" for i in range(20)]
    q, p = " ".join(q_words), " ".join(p_words)
    good_q, good_p = _replace(q_words, 4), _replace(p_words, 8)
    assert c.check_paraphrase(good_q, good_p, q, p) is None
    assert c.check_paraphrase("", good_p, q, p) == c.EMPTY
    assert c.check_paraphrase(good_q, "北京" * 10, q, p) == c.LANGUAGE
    assert c.check_paraphrase(good_q, good_p + " extra1 extra2 extra3 extra4", q, p) == c.LENGTH   # 24/20
    assert c.check_paraphrase(q, good_p, q, p) == c.TOO_SIMILAR
    assert c.check_paraphrase(good_q, _replace(p_words, 6), q, p) == c.TOO_SIMILAR          # 0.3, sentence
    assert c.check_paraphrase(good_q, good_p, q, p, accepted=[(good_q, "zz " * 20)]) == c.NEAR_DUPLICATE
    assert c.check_paraphrase(good_q, good_p, q, p, accepted=[("yy " * 10, good_p)]) == c.NEAR_DUPLICATE


def test_check_augment_each_reason():
    q, p = words(10, "q"), words(20, "p")
    new_q, new_p, new_n = words(10, "x"), words(20, "y"), words(20, "z")
    assert c.check_augment(new_q, new_p, new_n, q, p) is None
    assert c.check_augment(new_q, new_p, "北京" * 10, q, p) == c.LANGUAGE
    assert c.check_augment(_replace(q.split(), 3), new_p, new_n, q, p) == c.NOT_TOPIC_SHIFT   # a rewrite
    assert c.check_augment(new_q, words(25, "y"), new_n, q, p) == c.LENGTH                      # 25/20 > 1.2
    assert c.check_augment(new_q, new_p, words(15, "z"), q, p) == c.LENGTH                      # 15/20 < 0.8
    assert c.check_augment(new_q, new_p, new_p + ".", q, p) == c.NEAR_DUPLICATE
    assert c.check_augment(new_q, new_p, new_n, q, p, accepted=[(new_q, "a", "b")]) == c.NEAR_DUPLICATE


def test_check_hard_negative_each_reason():
    q, p = words(8, "q"), words(20, "p")
    n1, n2 = words(20, "n"), words(22, "m")
    assert c.check_hard_negative(n1, q, p) is None
    assert c.check_hard_negative(n2, q, p, accepted=[n1]) is None
    assert c.check_hard_negative(" ", q, p) == c.EMPTY
    assert c.check_hard_negative("北京" * 10, q, p) == c.LANGUAGE
    assert c.check_hard_negative(words(25, "n"), q, p) == c.LENGTH
    assert c.check_hard_negative(_replace(p.split(), 1), q, p) == c.NEAR_DUPLICATE      # near-equal to the positive
    assert c.check_hard_negative(n1 + "!", q, p, accepted=[n1]) == c.NEAR_DUPLICATE     # to another negative
