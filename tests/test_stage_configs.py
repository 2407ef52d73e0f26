"""configs/stage1.py and configs/stage2.py against RECIPE section 6: every number of the table, read from the
recipe file itself (not restated here), is the one the config trains with."""
import re

import pytest

from qzhou_jax.data import presets, shared_data
from qzhou_jax.train.loop import load_config

RECIPE = shared_data.data_dir().parent / "RECIPE.md"
TASK_OF_PRESET = {d["name"]: task for task, entries in (("retrieval", presets.retrieval()),
                                                        ("pair_score", presets.pair_score()),
                                                        ("classification", presets.classification()))
                  for d in entries}


def recipe_table() -> dict[str, tuple[str, str]]:
    """Section 6's table: item -> (stage 1 cell, stage 2 cell)."""
    if not RECIPE.exists():
        pytest.skip(f"{RECIPE} not found")
    text = RECIPE.read_text(encoding="utf-8")
    section = text[text.index("## 6."):text.index("## 7.")]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("item",) and not set(cells[0]) <= {"-"}:
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def number(cell: str) -> float | None:
    """"32k" -> 32000, "3e-5" -> 3e-5, "300 (unconfirmed)" -> 300, "-" -> None."""
    match = re.match(r"\s*([0-9.]+(?:e-?[0-9]+)?)(k?)", cell)
    if not match:
        return None
    return float(match.group(1)) * (1000 if match.group(2) else 1)


# Every default a recipe number could silently come from, set to a value the recipe never uses: the stage configs
# must set each number themselves (docs/recipe.md), so changing a default can never change the recipe.
FOREIGN_DEFAULTS = {
    "LOSS": dict(tau=0.5, cosent_tau=0.5),
    "OPTIM": dict(lr=1.0, warmup_steps=7, weight_decay=0.5, decay="cosine", final_lr_ratio=0.5, grad_clip=9.0, b1=0.5),
    "TRAIN": dict(steps=11),
    "DATA": dict(alpha=0.9, batch_size=dict(retrieval=3, pair_score=5, classification=3)),
    "MODEL": dict(dtype="float32"),
}


@pytest.mark.parametrize("foreign_defaults", [False, True], ids=["defaults", "foreign-defaults"])
@pytest.mark.parametrize("stage", [1, 2])
def test_stage_config_matches_recipe_section_6(stage, foreign_defaults, monkeypatch):
    if foreign_defaults:
        from qzhou_jax.config import defaults
        for table, values in FOREIGN_DEFAULTS.items():
            for key, value in values.items():
                monkeypatch.setitem(getattr(defaults, table), key, value)
    table = recipe_table()
    assert {"warm-up steps", "steps", "learning rate", "batch (InfoNCE tasks)", "batch (CoSENT tasks)", "precision",
            "temperature", "optimizer", "query / passage length"} <= set(table), sorted(table)
    cell = {item: cells[stage - 1] for item, cells in table.items()}
    c = load_config(f"configs/stage{stage}.py")
    assert c.optim.warmup_steps == number(cell["warm-up steps"])
    assert c.train.steps == number(cell["steps"])
    assert c.optim.lr == pytest.approx(number(cell["learning rate"]), rel=1e-12)
    infonce = number(cell["batch (InfoNCE tasks)"])
    assert c.data.batch_size["retrieval"] == infonce and c.data.batch_size["classification"] == infonce
    cosent = number(cell["batch (CoSENT tasks)"])
    tasks = {d.get("task") or TASK_OF_PRESET[d["name"]] for d in c.data.datasets}
    if cosent is None:  # stage 1: retrieval only
        assert tasks == {"retrieval"}
    else:
        assert c.data.batch_size["pair_score"] == cosent and tasks == {"retrieval", "pair_score", "classification"}
    assert {"bf16": "bfloat16"}[cell["precision"]] == c.model.dtype
    assert c.loss.tau == number(cell["temperature"]) and c.loss.cosent_tau == c.loss.tau  # (cosent: unconfirmed)
    assert (c.optim.decay, c.optim.final_lr_ratio, c.optim.grad_clip, c.data.alpha) == ("linear", 0.0, 1.0, 0.5)
    assert cell["optimizer"].startswith("Adam") and c.optim.b1 == 0.9
    decay = re.search(r"weight decay ([0-9.]+)", cell["optimizer"])
    if decay:
        assert c.optim.weight_decay == float(decay.group(1))
    query, passage = (number(x) for x in cell["query / passage length"].split("/"))
    for d in c.data.datasets:
        assert d["max_len_query"] == query, d["name"]
        if TASK_OF_PRESET.get(d["name"]) == "retrieval":
            assert d["max_len_passage"] == passage, d["name"]
    if stage == 2:  # RECIPE section 5: the stage-2 retrieval share
        assert c.data.eta == 0.72
