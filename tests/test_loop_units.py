"""The loop's pieces that need no sandbox: ledger, reducers, offline policy, profile facts, findings."""

from __future__ import annotations

import sqlite3

import pytest

from readfirst.agents.findings import finding
from readfirst.targets.llama_cpp.profile import make_profile
from readfirst.graph.ledger import Ledger
from readfirst.graph.state import extend_or_reset
from readfirst.records import BenchResult, BenchSample, BuildConfig

ROW = {"key": "k1", "kind": "runtime", "title": "t", "decision": "discard", "reason": "r", "speedup": 0.01,
       "ci_low": -0.01, "ci_high": 0.03, "wave": 1}


def test_ledger_records_once_per_key_and_survives_reopening(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    first = ledger.record(ROW)
    again = ledger.record({**ROW, "reason": "a re-run after a crash"})
    assert first["id"] == again["id"] == "E001" and again["reason"] == "r"
    second = ledger.record({**ROW, "key": "k2"})
    assert second["id"] == "E002"
    ledger.close()
    reopened = Ledger(tmp_path / "l.sqlite")
    assert [r["id"] for r in reopened.rows()] == ["E001", "E002"]
    tsv = reopened.export_tsv(tmp_path / "results.tsv").read_text().splitlines()
    assert tsv[0].startswith("id\twave\tkind") and len(tsv) == 3 and tsv[1].split("\t")[0] == "E001"


def test_ledger_schema_is_versioned(tmp_path):
    Ledger(tmp_path / "l.sqlite").close()
    version = sqlite3.connect(tmp_path / "l.sqlite").execute("PRAGMA user_version").fetchone()[0]
    assert version >= 1


def test_wave_results_append_and_reset():
    assert extend_or_reset([1], [2]) == [1, 2]
    assert extend_or_reset([1, 2], None) == []
    assert extend_or_reset(None, [3]) == [3]


def _bench(tg: float, pp: float) -> BenchResult:
    return BenchResult([BenchSample("pp512", 512, 0, [pp], pp, 0), BenchSample("tg128", 0, 128, [tg], tg, 0)],
                       2, True, "AMD EPYC", "x", BuildConfig(), "m.gguf")


@pytest.mark.parametrize("tg,memory_bound", [(70.0, True), (20.0, False)])
def test_profile_states_the_roofline(tg, memory_bound):
    p = make_profile(_bench(tg, 290.0), read_gbs=50.0, bytes_per_token=600 * 2**20)
    assert p.tg_limit == pytest.approx(50e9 / (600 * 2**20))
    assert f"{100 * tg / p.tg_limit:.0f}% of that limit" in " ".join(p.facts)
    assert any("memory-bound" in f for f in p.facts) is memory_bound
    assert any("compute-bound" in f for f in p.facts)


def test_a_profile_faster_than_its_roofline_states_no_roofline():
    # 90 t/s at 600 MiB a token needs 57 GB/s: a 10 GB/s probe reading was disturbed, not a fact to steer by.
    p = make_profile(_bench(90.0, 290.0), read_gbs=10.0, bytes_per_token=600 * 2**20)
    assert not any("memory-bound" in f and "unknown" not in f for f in p.facts)
    assert any("not trustworthy" in f for f in p.facts)


def test_findings_ids_are_stable_and_content_derived():
    a = finding("r", "q", "claim", [{"id": "c", "path": "p.c", "repo": "r", "start_line": 1, "end_line": 2}])
    b = finding("r", "q", "claim", [{"id": "c", "path": "p.c", "repo": "r", "start_line": 1, "end_line": 2}])
    c = finding("r", "q", "other claim")
    assert a["id"] == b["id"] != c["id"]
    assert a["citations"][0]["origin"] == "r p.c:1-2"


def test_parallel_records_get_distinct_ids(tmp_path):
    import threading
    ledger = Ledger(tmp_path / "l.sqlite")
    barrier = threading.Barrier(8)

    def record(i):
        barrier.wait()
        ledger.record({**ROW, "key": f"k{i}"})
    threads = [threading.Thread(target=record, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r["id"] for r in ledger.rows()) == [f"E{i:03d}" for i in range(1, 9)]


def test_a_corrupt_meta_json_stops_what_continues_a_run_but_not_a_listing(tmp_path):
    from readfirst.errors import ReadfirstError
    from readfirst.graph.runner import read_meta
    (tmp_path / "meta.json").write_text('{"run_id": "x", "offline": tr')
    assert read_meta(tmp_path)["status"] == "unknown"
    with pytest.raises(ReadfirstError, match="cannot be continued"):
        read_meta(tmp_path, strict=True)
    (tmp_path / "meta.json").write_text("[1, 2]")
    with pytest.raises(ReadfirstError, match="not a JSON object"):
        read_meta(tmp_path, strict=True)
