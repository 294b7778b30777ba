"""The per-op profile's reading: shares, calls per token, the ISA paths, and a profile that contradicts itself
reported as unknown rather than handed on (the raw JSON is what native/op_profile.cpp prints)."""

from __future__ import annotations

from readfirst.targets.llama_cpp.profile import op_facts, op_summary

INFO = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | AVX512 = 0 | AMX_INT8 = 0 | REPACK = 1 |"


def raw(tg_ops, *, seconds=1.0, plain=0.9, pp=None):
    phases = {"tg": {"tokens": 4, "seconds": seconds, "unprofiled_seconds": plain, "ops": tg_ops}}
    if pp is not None:
        phases["pp"] = pp
    return {"system_info": INFO, "phases": phases}


def test_shares_calls_per_token_and_isa():
    s = op_summary(raw([{"op": "MUL_MAT q4_0 2048x5632", "count": 176, "seconds": 0.6},
                        {"op": "RMS_NORM f32", "count": 180, "seconds": 0.1},
                        {"op": "ADD f32", "count": 88, "seconds": 0.05}]))
    tg = s["phases"]["tg"]
    assert [o["op"] for o in tg["ops"]] == ["MUL_MAT q4_0 2048x5632", "RMS_NORM f32", "ADD f32"]
    assert abs(tg["ops"][0]["share"] - 0.8) < 1e-9 and tg["ops"][0]["per_token"] == 44
    assert abs(tg["overhead"] - (1.0 / 0.9 - 1)) < 1e-9 and not tg["problems"]
    assert s["isa"] == ["SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "REPACK"]
    facts = op_facts(s, top=2)
    assert facts[0].startswith("Where generation's time goes") and "MUL_MAT q4_0 2048x5632 80% (44/token)" in facts[0]
    assert "everything else 7%" in facts[0] and "at most its share" in facts[0]
    assert facts[-1] == "CPU paths compiled into this build (ggml's system info): SSE3, SSSE3, AVX, AVX2, F16C, FMA, REPACK."


def test_a_profile_whose_ops_outlast_its_run_is_unknown_not_a_fact():
    s = op_summary(raw([{"op": "MUL_MAT q4_0 2048x5632", "count": 176, "seconds": 1.5}], seconds=1.0))
    facts = op_facts(s)
    assert "is unknown" in facts[0] and "more than the 1.000 s" in facts[0] and "%" not in facts[0].split("(")[0]


def test_a_profile_that_slowed_the_run_too_much_is_unknown_and_an_empty_one_too():
    slow = op_facts(op_summary(raw([{"op": "ADD f32", "count": 8, "seconds": 0.5}], seconds=2.0, plain=1.0)))
    assert "is unknown" in slow[0] and "slowed it by 100%" in slow[0]
    empty = op_facts(op_summary(raw([], pp={"tokens": 16, "seconds": 0.2, "unprofiled_seconds": 0.2, "ops": []})))
    assert "generation's time goes is unknown" in empty[0] and "prompt processing's time goes is unknown" in empty[1]
