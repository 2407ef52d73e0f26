from qzhou_jax.data import presets
from qzhou_jax.data.pipeline import mixture_info


def test_chinese_classification_really_adds_waimai(shared_dir):
    names = [d["name"] for d in presets.classification(chinese=True)]
    assert "waimai" in names and "waimai" not in [d["name"] for d in presets.classification(chinese=False)]
    entry = next(d for d in presets.classification(chinese=True) if d["name"] == "waimai")
    info = mixture_info(dict(datasets=[entry]))
    assert info.tasks == ["classification"] and info.sizes[0] > 10_000
    assert sorted(info.label_vocabularies[0]) == ["negative", "positive"]
