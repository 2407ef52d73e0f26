"""losses/config.py: LossConfig's validation and loss_config_from."""
import ml_collections
import pytest

from qzhou_jax.losses import LossConfig, loss_config_from


def test_loss_config_from_dicts():
    cfg = LossConfig(**ml_collections.ConfigDict({"tau": 0.05, "matryoshka_dims": [128, 256]}))
    assert cfg.tau == 0.05 and cfg.matryoshka_dims == (128, 256)
    hash(cfg)  # usable as a static jit argument
    assert LossConfig(**{"matryoshka_dims": []}).matryoshka_dims is None
    assert loss_config_from({"doc_doc": True}) == LossConfig(doc_doc=True)
    with pytest.raises(ValueError, match="unknown loss option.*'temperature'"):
        loss_config_from({"temperature": 0.1})
    with pytest.raises(ValueError, match="tau"):
        LossConfig(tau=0.0)
    with pytest.raises(ValueError, match="doc_doc"):
        LossConfig(doc_doc="yes")
    with pytest.raises(ValueError, match="matryoshka_dims"):
        LossConfig(matryoshka_dims=(0, 8))
    with pytest.raises(ValueError, match="false_negative_margin"):
        LossConfig(false_negative_margin="0.1")
