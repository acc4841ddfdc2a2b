"""`vocabseg bench` end to end on tiny presets: what it measures and prints (no
assertion on any time: speed is never tested, only reported)."""
import json

import pytest

from vocabseg.cli import main
from vocabseg.engine.bench import measure as bench, report as bench_report


def test_model_worker_reports_a_consistent_row():
    r = bench.work_model("fcclip-tiny", threads=1, runs=2, warmup=1, plain=True)
    for label in ("fast", "plain"):
        m = r[label]
        assert len(m["runs"]) == 2 and m["latency"] == pytest.approx(m["encode"] + m["classify"], rel=0.5)
        assert m["gflop_encode"] > 0 and m["gflop_classify"] >= 0
    # both paths do the same arithmetic up to the skipped earlier decoder sets' masks
    assert r["fast"]["gflop_encode"] == pytest.approx(r["plain"]["gflop_encode"], rel=0.5)
    assert r["size"] == [r["size"][0]] * 2 and r["peak_rss_mb"] > 0
    table = bench_report.tables({"machine": {"cpu": "x", "cpus": 2, "torch": "t"}, "threads": 1, "runs": 2,
                                 "warmup": 1, "peak": 50.0, "peak_1_thread": 25.0, "models": [r], "text": []})
    row = next(line for line in table.splitlines() if line.startswith("| `fcclip-tiny`"))
    gflop = r["fast"]["gflop_encode"] + r["fast"]["gflop_classify"]
    assert f"**{r['fast']['latency']:.2f}**" in row and f"{gflop / r['fast']['latency'] / 50.0:.0%}" in row


def test_text_worker_encodes_then_reads_the_cache(monkeypatch):
    from vocabseg.engine import precision
    monkeypatch.setattr(precision, "native_bf16", lambda device_type="cpu": True)
    r = bench.work_text("san-tiny", "voc20", threads=1, precisions=["bf16"])
    assert r["synonyms"] == 20 and r["prompts"] == 20 * 14
    assert r["cached"] < r["uncached"] and r["prompts_per_s"] == pytest.approx(r["prompts"] / r["uncached"])
    assert r["uncached_bf16"] > 0 and 0.99 < r["cos_min_bf16"] < 1      # encoded again at bf16, not the fp32 entry
    table = bench_report.tables({"machine": {"cpu": "x", "cpus": 2, "torch": "t"}, "threads": 1, "runs": 1, "warmup": 1,
                           "peak": 50.0, "peak_1_thread": 25.0, "models": [], "text": [r]})
    row = next(line for line in table.splitlines() if line.startswith("| `san-tiny`"))
    assert row.endswith(f"| {r['uncached_bf16'] / r['uncached']:.2f} | {1 - r['cos_min_bf16']:.1e} |")


@pytest.mark.slow
def test_bench_command_errors_and_json(tmp_path, capsys):
    assert main(["bench", "--models", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    assert main(["bench", "--models", "san-tiny", "--runs", "0"]) == 2
    assert "--runs" in capsys.readouterr().err
    out = tmp_path / "r.json"
    assert main(["bench", "--models", "--runs", "1", "--warmup", "0", "--threads", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["models"] == [] and result["peak"] > 0 and result["peak_1_thread"] > 0
    assert "Matrix-multiply peak measured in this run" in capsys.readouterr().out


def test_precision_columns_are_ratios_to_fp32_of_the_same_run(monkeypatch):
    from vocabseg.engine import int8, precision
    monkeypatch.setattr(precision, "native_bf16", lambda device_type="cpu": True)
    monkeypatch.setattr(int8, "native_int8", lambda: True)
    r = bench.work_model("maskclip-tiny", threads=1, runs=1, warmup=0, plain=False, precisions=["bf16", "int8"])
    assert {"fast", "bf16", "int8"} <= r.keys() and all(r[p]["latency"] > 0 for p in ("bf16", "int8"))
    peaks = bench.work_peak(threads=1, size=256, runs=1)
    assert peaks["gflops"] > 0 and peaks["gflops_bf16"] > 0 and peaks["gflops_int8"] > 0
    table = bench_report.tables({"machine": {"cpu": "x", "cpus": 2, "torch": "t", "capability": "AVX512",
                                             "flags": ["avx512_bf16", "avx512_vnni"]}, "threads": 1, "runs": 1,
                                 "warmup": 0, "peak": 50.0, "peak_bf16": 200.0, "peak_int8": 300.0,
                                 "peak_1_thread": 25.0, "models": [r], "text": []})
    assert "flags: avx512_bf16, avx512_vnni" in table and "R = bf16 / fp32 = 4.00" in table
    row = [line for line in table.splitlines() if line.startswith("| `maskclip-tiny`")][-1]
    gflop = r["fast"]["gflop_encode"] + r["fast"]["gflop_classify"]
    assert row == (f"| `maskclip-tiny` | {r['fast']['latency']:.2f} | {r['bf16']['latency'] / r['fast']['latency']:.2f} "
                   f"| {r['int8']['latency'] / r['fast']['latency']:.2f} | "
                   f"{gflop / r['bf16']['latency'] / 200.0:.0%} |")
