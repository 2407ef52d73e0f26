"""metrics.jsonl: a row cut short by a crash is dropped with a warning on resume, never a crash."""
import json

from qzhou_jax.train.metrics import MetricsWriter, read_metrics


def test_truncated_last_line_is_dropped_and_reported(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2, 3)]
    path.write_text("".join(rows) + rows[0][:9])  # what kill -9 mid-write leaves
    writer = MetricsWriter(str(tmp_path), resume_step=2)
    writer.write(3, {"loss": 0.5})
    writer.close()
    assert "dropped an unreadable metrics row" in capsys.readouterr().out
    assert [(r["step"], r["loss"]) for r in read_metrics(str(tmp_path))] == [(1, 1.0), (2, 0.5), (3, 0.5)]
    assert path.read_text().endswith("\n")
