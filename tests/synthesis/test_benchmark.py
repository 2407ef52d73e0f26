"""benchmarks/synthesize.py runs end to end at a tiny size and reports what it claims to."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_synthesize_benchmark_smoke(capsys):
    spec = importlib.util.spec_from_file_location("bench_synthesize", ROOT / "benchmarks" / "synthesize.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--latency", "0.05", "--concurrency", "1", "4", "--requests-per-slot", "3",
                      "--check-repeats", "1"])
    assert [r["concurrency"] for r in out["results"]] == [1, 4]
    for r in out["results"]:
        assert r["requests"] == 3 * r["concurrency"] and r["max_in_flight"] <= r["concurrency"]
        assert 0 < r["share_of_ideal"] <= 1.05 and r["check_cpu_us_per_accepted"] > 0
    assert "ideal" in capsys.readouterr().out
