"""The logits gate read from the whole output: the code under test runs inside llama-perplexity, so it can print
after the real figures (pushing them out of the tail the result keeps) or print figures of its own. Each case runs
in a real container with the sandbox's own collector and reads the figures as the llama.cpp target does."""

from __future__ import annotations

import pytest

from readfirst.records import Mount
from readfirst.targets.llama_cpp.logits import KLD_MARKERS, kld_failure, parse_kld

from .helpers import small_sandbox

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]

# What llama-perplexity --kl-divergence prints at its end, for a candidate whose numerics are wrong.
BROKEN = """====== KL divergence statistics ======
Mean    KLD:   0.041200 ±   0.000300
Maximum KLD:   2.500000
99.9%   KLD:   1.900000
Median  KLD:   0.020000
====== Token probability statistics ======
Same top p: 81.000 ±  0.500 %
"""
FORGED = """Mean    KLD:   0.000001 ±   0.000000
Maximum KLD:   0.000002
99.9%   KLD:   0.000002
Same top p: 100.000 ±  0.000 %
"""


def _run(attack, docker_client, base_image, script: str):
    out = attack.root / "out"
    out.mkdir()
    sandbox = small_sandbox(docker_client, base_image, attack.root)
    r = sandbox.run(script, mounts=[Mount(out, "/out", False)], timeout_s=60, collect=KLD_MARKERS)
    assert r.ok, r.output_tail
    return parse_kld(r.output_tail, lines=r.lines, capped=r.lines_capped)


def _printf(text: str) -> str:
    return "printf '%s' " + "'" + text.replace("'", "") + "'"


def test_figures_pushed_out_of_the_tail_are_still_read(attack, docker_client, base_image):
    # 160 KB of blank lines after the real (failing) figures: the tail alone no longer holds them.
    kld = _run(attack, docker_client, base_image,
               f"{_printf(BROKEN)}; head -c 163840 /dev/zero | tr '\\0' '\\n'")
    if kld.ok and kld_failure(kld) is None:
        attack.escaped(f"a broken candidate's logits passed once its figures left the tail: {kld}")
    assert kld.max_kld == 2.5 and "KLD" in (kld_failure(kld) or "")


def test_figures_printed_by_the_code_under_test_are_refused(attack, docker_client, base_image):
    # The candidate's kernel prints passing figures of its own as the process exits, after a flood.
    kld = _run(attack, docker_client, base_image,
               f"{_printf(BROKEN)}; head -c 163840 /dev/zero | tr '\\0' '\\n'; {_printf(FORGED)}")
    if kld_failure(kld) is None:
        attack.escaped(f"forged KLD figures were read as the check's: {kld}")
    assert not kld.ok and "times" in kld.log_tail


def test_the_honest_figures_pass(attack, docker_client, base_image):
    kld = _run(attack, docker_client, base_image, _printf(FORGED))
    assert kld.ok and kld_failure(kld) is None, kld
