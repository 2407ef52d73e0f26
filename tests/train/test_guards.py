"""Stalled training is reported: exactly-zero gradient norms or an exactly constant loss, K steps in a row."""
from qzhou_jax.train.guards import StallDetector


def test_zero_gradients_and_constant_loss_warn_once_per_streak(capsys):
    stall = StallDetector(k=3)
    warned = [bool(stall.update(s, loss, g)) for s, (loss, g) in enumerate(
        [(3.4, 0.0), (3.3, 0.0), (3.2, 0.0), (3.1, 0.0), (3.0, 1.0), (3.0, 1.0), (3.0, 1.0), (2.9, 1.0)], 1)]
    assert warned == [False, False, True, False, False, False, True, False]
    out = capsys.readouterr().out
    assert "gradient norm has been exactly 0 for 3 steps (step 3)" in out
    assert "loss has been exactly 3 for 3 steps (step 7)" in out
    assert not any(StallDetector(k=3).update(s, 1.0 + s, 0.5) for s in range(10))
