"""The mteb adapter, called the way mteb v1 and v2 call an encoder, on a fake recording encoder."""
import dataclasses
import enum
import json
import subprocess
import sys
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pytest
from sklearn.metrics.pairwise import cosine_similarity

from qzhou_jax.eval import TextEncoder
from qzhou_jax.eval import mteb_adapter
from qzhou_jax.eval.mteb_adapter import MTEBEncoder

DIM = 4


class PromptType(str, enum.Enum):  # stands in for mteb.types.PromptType (v2 values; v1 said "passage")
    query = "query"
    document = "document"


@dataclasses.dataclass
class TaskMetadata:  # the two fields of mteb's TaskMetadata the adapter reads
    name: str
    type: str


class Batches:
    """DataLoader-like: iterable (repeatedly) of {"text": [...]} batches, as mteb v2's create_dataloader."""

    def __init__(self, texts, batch_size=2):
        self.batches = [{"text": texts[i : i + batch_size], "id": list(range(i, i + batch_size))}
                        for i in range(0, len(texts), batch_size)]

    def __iter__(self):
        return iter(self.batches)


class RecordingEncoder:
    def __init__(self):
        self.calls: list[tuple[list[str], str | None]] = []

    def encode(self, texts, instruction=None):
        self.calls.append((list(texts), instruction))
        rows = [[len(t), sum(map(ord, t)) % 97, 1.0, float(instruction is not None)] for t in texts]
        return np.asarray(rows, dtype=np.float64).reshape(len(texts), DIM)


@runtime_checkable
class EncoderProtocolLike(Protocol):  # the members mteb v2's runtime_checkable EncoderProtocol checks
    def encode(self, inputs: Any, **kwargs: Any) -> Any: ...
    def similarity(self, a: Any, b: Any) -> Any: ...
    def similarity_pairwise(self, a: Any, b: Any) -> Any: ...
    @property
    def mteb_model_meta(self) -> Any: ...


def _adapter(**kwargs):
    enc = RecordingEncoder()
    return MTEBEncoder(enc, **kwargs), enc


QUERIES = ["what is a claim?", "does X cause Y?", "third query"]
DOCS = ["a document", "another document body", "d3", "d4", "d5"]


def _v2(adapter, texts, name, task_type, prompt_type):
    return adapter.encode(Batches(texts), task_metadata=TaskMetadata(name, task_type), hf_split="test",
                          hf_subset="default", prompt_type=prompt_type, batch_size=32)


def test_v2_retrieval_prompts_queries_only():
    adapter, enc = _adapter()
    q = _v2(adapter, QUERIES, "SciFact", "Retrieval", PromptType.query)
    d = _v2(adapter, DOCS, "SciFact", "Retrieval", PromptType.document)
    assert q.shape == (3, DIM) and d.shape == (5, DIM) and q.dtype == np.float32
    assert enc.calls[0] == (QUERIES, mteb_adapter.DEFAULT_INSTRUCTIONS["SciFact"])
    assert enc.calls[1] == (DOCS, None)


@pytest.mark.parametrize("name,task_type,prompt_type", [
    ("STSBenchmark", "STS", None),
    ("Ocnli", "PairClassification", None),
    ("Banking77Classification", "Classification", None),
    ("Waimai", "Classification", None),
    ("MindSmallReranking", "Reranking", PromptType.document),    # v2 reranking encodes docs as documents
    ("ArguAna", "Retrieval", PromptType.document),               # QZhou prompts its documents too
    ("SomeNewClustering", "Clustering", PromptType.document),    # symmetric by type (instruction from table)
])
def test_symmetric_tasks_prompt_both_sides(name, task_type, prompt_type):
    instructions = {**mteb_adapter.DEFAULT_INSTRUCTIONS, "SomeNewClustering": "Cluster the given texts"}
    adapter, enc = _adapter(instructions=instructions)
    _v2(adapter, QUERIES, name, task_type, PromptType.query if prompt_type else None)
    _v2(adapter, DOCS, name, task_type, prompt_type)
    expected = instructions[name]
    assert [c[1] for c in enc.calls] == [expected, expected]
    assert enc.calls[1][0] == DOCS


def test_published_instructions_are_passed_verbatim():
    adapter, enc = _adapter()
    _v2(adapter, ["a", "b"], "Waimai", "Classification", None)
    _v2(adapter, ["a", "b"], "Ocnli", "PairClassification", None)
    assert [c[1] for c in enc.calls] == [
        "Classify the customer review from a food takeaway platform into positive or negative",
        "Retrieve semantically similar text."]


def test_all_ten_local_tasks_have_an_instruction():
    adapter, _ = _adapter()
    assert len(mteb_adapter.LOCAL_TASK_TYPES) == 10
    for name, task_type in mteb_adapter.LOCAL_TASK_TYPES.items():
        instruction = adapter.instruction_for(name, task_type, "query")
        assert isinstance(instruction, str) and instruction.strip(), name


def test_instruction_tables_are_clean():
    for task, instruction in mteb_adapter.DEFAULT_INSTRUCTIONS.items():
        assert instruction == instruction.strip() and "  " not in instruction and "\n" not in instruction, task
    # Every task QZhou prompts on both sides has a published instruction.
    assert mteb_adapter.QZHOU_BOTH_SIDES_TASKS <= set(mteb_adapter.QZHOU_INSTRUCTIONS)


def test_v1_call_style_with_task_name():
    adapter, enc = _adapter()
    out = adapter.encode(QUERIES, task_name="STSBenchmark", prompt_type=None, batch_size=8)
    adapter.encode(DOCS, "SciFact", "passage")               # v1 document side, positional, plain string
    adapter.encode(QUERIES, task_name="SciFact", prompt_type=PromptType.query)
    adapter.encode(DOCS, task_name="LCQMC", prompt_type=PromptType.document)  # v1 knows LCQMC's type
    assert out.shape == (3, DIM)
    sts, sci = mteb_adapter.DEFAULT_INSTRUCTIONS["STSBenchmark"], mteb_adapter.DEFAULT_INSTRUCTIONS["SciFact"]
    assert [c[1] for c in enc.calls] == [sts, None, sci, sts]


def test_json_override_and_null(tmp_path):
    path = tmp_path / "instructions.json"
    path.write_text(json.dumps({"SciFact": "Find evidence for the claim", "Waimai": None}), encoding="utf-8")
    adapter, enc = _adapter(instructions_file=path)
    _v2(adapter, QUERIES, "SciFact", "Retrieval", PromptType.query)
    _v2(adapter, QUERIES, "Waimai", "Classification", None)
    _v2(adapter, QUERIES, "STSBenchmark", "STS", None)  # untouched defaults survive the override
    assert [c[1] for c in enc.calls] == ["Find evidence for the claim", None, "Retrieve semantically similar text"]


def test_bad_json_files_name_file_and_field(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"SciFact": "x",\n "Waimai": }', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.json:2:\d+: invalid JSON"):
        mteb_adapter.load_instructions(broken)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"SciFact": 3}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"wrong\.json: task 'SciFact'"):
        mteb_adapter.load_instructions(wrong)
    not_obj = tmp_path / "list.json"
    not_obj.write_text('["SciFact"]', encoding="utf-8")
    with pytest.raises(ValueError, match=r"list\.json: expected a JSON object"):
        mteb_adapter.load_instructions(not_obj)


def test_unknown_tasks_fall_back_by_type_or_fail():
    adapter, enc = _adapter()
    with pytest.warns(UserWarning, match="no instruction for task 'NewSTS'"):
        _v2(adapter, QUERIES, "NewSTS", "STS", None)
    assert enc.calls[-1][1] == "Retrieve semantically similar text"
    with pytest.raises(KeyError, match="'NewClassification'"):
        _v2(adapter, QUERIES, "NewClassification", "Classification", None)


def test_use_instruction_false_encodes_plain():
    adapter, enc = _adapter(use_instruction=False)
    _v2(adapter, QUERIES, "SciFact", "Retrieval", PromptType.query)
    _v2(adapter, QUERIES, "STSBenchmark", "STS", None)
    assert [c[1] for c in enc.calls] == [None, None]


def test_torch_dataloader_batches():
    torch_data = pytest.importorskip("torch.utils.data")
    loader = torch_data.DataLoader([{"text": t} for t in DOCS], batch_size=2)  # default collate -> lists
    adapter, enc = _adapter()
    out = adapter.encode(loader, task_metadata=TaskMetadata("SciFact", "Retrieval"), hf_split="test",
                         hf_subset="default", prompt_type=PromptType.document)
    assert out.shape == (5, DIM) and enc.calls == [(DOCS, None)]


def test_errors_are_clear():
    adapter, _ = _adapter()
    with pytest.raises(TypeError, match="task_metadata .* or task_name"):
        adapter.encode(QUERIES)
    with pytest.raises(KeyError, match="batch 0 has no 'text' field"):
        adapter.encode([{"sentence": ["x"]}], task_name="STSBenchmark")
    with pytest.raises(TypeError, match="single string"):
        adapter.encode("one text", task_name="STSBenchmark")
    with pytest.raises(ValueError, match="unknown prompt_type 'corpus_x'"):
        adapter.encode(QUERIES, task_name="SciFact", prompt_type="corpus_x")

    class Short(RecordingEncoder):
        def encode(self, texts, instruction=None):
            return super().encode(texts, instruction)[:-1]

    with pytest.raises(ValueError, match=r"shape \(2, 4\) for 3 texts"):
        MTEBEncoder(Short()).encode(QUERIES, task_name="STSBenchmark")
    with pytest.raises(TypeError, match="no encode"):
        MTEBEncoder(object())


def test_similarity_functions_and_protocol_shape():
    adapter, enc = _adapter(model_meta="meta")
    assert isinstance(enc, TextEncoder)
    assert isinstance(adapter, EncoderProtocolLike) and adapter.mteb_model_meta == "meta"
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 6)), rng.normal(size=(3, 6))
    np.testing.assert_allclose(adapter.similarity(a, b), cosine_similarity(a, b), atol=1e-6)
    np.testing.assert_allclose(adapter.similarity_pairwise(a[:3], b),
                               np.diag(cosine_similarity(a[:3], b)), atol=1e-6)


def test_import_does_not_need_mteb():
    # In a fresh interpreter: other test modules (tests/eval/test_mteb_real.py) import the real mteb.
    code = "import sys, qzhou_jax.eval.mteb_adapter, qzhou_jax.eval.tasks; assert 'mteb' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
