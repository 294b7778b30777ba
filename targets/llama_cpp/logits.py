"""llama.cpp's logits check: a candidate's logits against the baseline's, from llama-perplexity --kl-divergence.

The sandbox only measures (parse_kld); kld_failure judges the figures against KLDThresholds.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ...records import KLDResult


_KLD_LINE = {
    "mean": re.compile(r"Mean\s+KLD:\s*([-\d.eE+naif]+)"),
    "max": re.compile(r"Maximum KLD:\s*([-\d.eE+naif]+)"),
    "p999": re.compile(r"99\.9%\s+KLD:\s*([-\d.eE+naif]+)"),
    "same": re.compile(r"Same top p:\s*([-\d.eE+naif]+)"),
}


# What the sandbox collects from llama-perplexity's whole output for parse_kld: the figures' lines, wherever they
# fall, so that output printed after them cannot push them out of the tail the result keeps.
KLD_MARKERS = ("KLD", "Same top p")


def parse_kld(output: str, *, lines: list[str] | None = None, capped: bool = False) -> KLDResult:
    """The KLD figures of llama-perplexity's output. `ok` says the check ran to the end; the evaluator judges
    the figures (agents.statistics.kld_failure), the sandbox only measures. With `lines` (the KLD_MARKERS lines
    of the whole stream) the figures come from them, and each must be printed exactly once: the code under test
    runs inside llama-perplexity, and a second figure of its own would otherwise be read as the check's."""
    text = "\n".join(lines) if lines is not None else output
    if capped:
        return _failed("llama-perplexity's KLD lines could not all be collected (more than the sandbox keeps, one "
                       "too long, or an output that never ended): the figures cannot be told")
    values = {}
    for key, rx in _KLD_LINE.items():
        m = rx.findall(text)
        if not m:
            return _failed(f"no '{key}' line in llama-perplexity's output: {output[-1000:]}")
        if lines is not None and len(m) > 1:
            return _failed(f"llama-perplexity printed its '{key}' figure {len(m)} times ({', '.join(m[:4])}): "
                           f"a figure printed by the code under test cannot be told from the check's")
        values[key] = float(m[-1])
    ok = all(math.isfinite(v) for v in values.values())
    # the evidence: the output around its last figures, or the lines read (they hold them) when output pushed
    # the figures out of the tail
    shown = output if "KLD" in output else text
    tail = shown[max(0, shown.rfind("KLD") - 600):]
    return KLDResult(values["mean"], values["max"], values["p999"], values["same"], ok, tail[-1500:])


def _failed(why: str) -> KLDResult:
    return KLDResult(float("inf"), float("inf"), float("inf"), 0.0, False, why)


@dataclass
class KLDThresholds:
    """Logits of a candidate against the baseline's (llama-perplexity --kl-divergence). Rounding passes; wrong
    numerics fail. Anchors: a harmless change (flash attention on vs off) gave max KLD 2e-6; deliberate precision
    losses are far above that (Q8_0 vs F16 is ~1e-3 mean KLD, Q4_0 ~1e-2 and more); a broken kernel (wrong scale,
    off-by-one block) scrambles logits to mean KLD of 1e-2 to 1 and drops the same-top-token rate well below 99%.
    """
    max_mean: float = 1e-5
    """5x the harmless *max*, so ~50-100x its mean: fusions reorder more float operations than the fa toggle and
    the rounding compounds over the layers; still 100x below a Q8_0-sized precision loss."""
    max_p999: float = 1e-4
    """The tail that a systematic error in a rare path (one quant type, one row length) shows first."""
    max_max: float = 1e-3
    """500x the harmless max: the single worst token is the most volatile figure (a near-flat distribution
    amplifies rounding), so it gets the widest margin, yet stays below any real numeric error."""
    min_same_top_p: float = 99.0
    """Percent of tokens whose top-1 token is the baseline's. Rounding only flips near-ties (well under 1% of
    tokens); a broken kernel flips a large share."""


def kld_failure(kld: KLDResult, thresholds: KLDThresholds | None = None) -> str | None:
    """The first KLD threshold the candidate fails, as a sentence; None when the logits pass."""
    thresholds = thresholds or KLDThresholds()
    if not kld.ok:
        return "the logits check did not complete" + (f": {kld.log_tail.strip()[-200:]}" if kld.log_tail else ".")
    checks = [("mean KLD", kld.mean_kld, thresholds.max_mean), ("99.9th percentile KLD", kld.p999_kld,
              thresholds.max_p999), ("max KLD", kld.max_kld, thresholds.max_max)]
    for name, value, limit in checks:
        if not value <= limit:  # also catches NaN
            return f"logits differ from the baseline's: {name} {value:.2e} > {limit:.0e}."
    if not kld.same_top_p >= thresholds.min_same_top_p:
        return (f"logits differ from the baseline's: the same top token in {kld.same_top_p:.2f}% of positions "
                f"< {thresholds.min_same_top_p:.1f}%.")
    return None

