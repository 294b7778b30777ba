"""The trace's part of the run's HTML page (graph/report_html.py): the timeline, every step expandable
(<details>, id step-N so the experiment table can link to the step that ran it), its calls expandable inside it.
Inline CSS, no script, no network."""

from __future__ import annotations

import html
import json
from typing import Any

from .trace_read import Step, Trace

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.4em}table{border-collapse:collapse;margin:1em 0}td,th{padding:2px 8px;border-bottom:1px solid #ddd;
text-align:left;vertical-align:top}details{margin:4px 0;border-left:3px solid #ccc;padding-left:8px}
details.error{border-color:#c33}details.interrupted{border-color:#e90}summary{cursor:pointer}
pre{background:#f6f6f6;padding:6px;overflow-x:auto;max-height:40em;white-space:pre-wrap}.k{color:#666}
.llm{color:#63c}.target{color:#06c}.sandbox{color:#080}.kb{color:#a50}
"""


def _pre(value: Any, limit: int = 20000) -> str:
    text = value if isinstance(value, str) else json.dumps(value, indent=2, default=str, sort_keys=True)
    if len(text) > limit:
        text = text[:limit] + f"\n[... {len(text) - limit} more characters]"
    return f"<pre>{html.escape(text)}</pre>"


def _call(trace: Trace, call: dict[str, Any]) -> str:
    kind = call["kind"]
    nested = " (inside the call above)" if call.get("nested") else ""
    if kind == "llm":
        head = (f"LLM {call.get('agent') or ''} · {call.get('model')} · {call.get('input_tokens')}+"
                f"{call.get('output_tokens')} tokens · ${float(call.get('cost_usd') or 0):.4f} · "
                f"{call.get('latency_s') or 0:.2f}s")
        if call.get("tool_calls"):
            head += f" · tools {call['tool_calls']}"
        body = "<p class=k>request</p>" + _pre(trace.blob(call.get("request"))) + "<p class=k>response</p>" + \
            _pre(trace.blob(call.get("response")) or call.get("error"))
    elif kind == "kb" and "ids" in call:
        head = f"KB read of {len(call.get('ids') or [])} cited chunks"
        body = _pre(trace.blob(call.get("results")))
    elif kind == "kb":
        head = f"KB query {call.get('query')!r} where {call.get('where')} → {len(call.get('origins') or [])} results"
        body = _pre(trace.blob(call.get("results")))
    elif kind == "target":
        head = f"target.{call.get('method')} · {call.get('duration_s')}s" + (" · error" if "error" in call else "")
        body = "<p class=k>arguments</p>" + _pre(trace.blob(call.get("args"))) + "<p class=k>result</p>" + \
            _pre(call.get("error") or trace.blob(call.get("result")))
    elif kind == "sandbox":
        head = f"sandbox: {call.get('command', '')[:160]} · exit {call.get('exit_code')} · {call.get('duration_s')}s"
        body = (f"<p class=k>log: {html.escape(str(call.get('log_path')))}</p>" if call.get("log_path") else "") + \
            _pre(call.get("log_tail") or call.get("error") or "")
    else:
        head = f"{kind}: " + ", ".join(f"{k}={v}" for k, v in call.items()
                                      if k not in ("event", "kind", "step", "seq", "at", "nested"))[:200]
        return f"<div class='{kind}'>{html.escape(head)}</div>"
    return (f"<details class='{kind}'><summary>{html.escape(head + nested)}</summary>{body}</details>")


def _step(trace: Trace, step: Step, t0: float, experiments: frozenset[str]) -> str:
    end = step.end or {}
    status = step.status
    took = "?" if step.duration_s is None else f"{step.duration_s}"
    head = (f"#{step.step} {step.node} · +{step.at - t0:.1f}s · {took}s"
            f" · {len(step.calls)} calls" + (f" · ${step.cost_usd:.4f}" if step.cost_usd else "")
            + ("" if status == "ok" else f" · {status}"))
    parts = [f"<p class=k>checkpoint {html.escape(str(step.starts_from))} → {html.escape(str(step.ends_at))}; "
             f"input digest {html.escape(step.input_digest)}</p>"]
    if step.experiment_ids():
        parts.append("<p>ran " + ", ".join(f"<a href='#exp-{html.escape(i)}'>{html.escape(i)}</a>" if i in experiments
                                            else html.escape(i) for i in step.experiment_ids()) + "</p>")
    if step.payload is not None:
        parts.append("<p class=k>payload</p>" + _pre(trace.blob(step.payload)))
    if "error" in end:
        parts.append("<p class=k>error</p>" + _pre(end["error"]))
    elif step.end is not None:
        parts.append("<p class=k>state update</p>" + _pre(trace.update(step)))
    parts += [_call(trace, c) for c in step.calls]
    return (f"<details class='step {status}' id='step-{step.step}'><summary>{html.escape(head)}</summary>"
            + "".join(parts) + "</details>")


def timeline(trace: Trace, experiments: frozenset[str] = frozenset()) -> str:
    """Every step of the run, in order, as expandable sections; a step links to the experiments it ran that
    the page shows (`experiments`, their ids)."""
    steps = trace.ordered()
    t0 = min((s.at for s in steps), default=0.0)
    return "".join(_step(trace, s, t0, experiments) for s in steps)
