"""`readfirst trace export --html`: one self-contained page (inline CSS, no script, no network) with the run's
timeline and every step expandable (<details>), its calls expandable inside it."""

from __future__ import annotations

import html
import json
from typing import Any

from .trace_read import Step, Trace

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.4em}table{border-collapse:collapse;margin:1em 0}td,th{padding:2px 8px;border-bottom:1px solid #ddd;
text-align:left}details{margin:4px 0;border-left:3px solid #ccc;padding-left:8px}details.error{border-color:#c33}
details.interrupted{border-color:#e90}summary{cursor:pointer}pre{background:#f6f6f6;padding:6px;overflow-x:auto;
max-height:40em;white-space:pre-wrap}.k{color:#666}.llm{color:#63c}.target{color:#06c}.sandbox{color:#080}
.kb{color:#a50}
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


def _step(trace: Trace, step: Step, t0: float) -> str:
    end = step.end or {}
    status = step.status
    took = "?" if step.duration_s is None else f"{step.duration_s}"
    head = (f"#{step.step} {step.node} · +{step.at - t0:.1f}s · {took}s"
            f" · {len(step.calls)} calls" + (f" · ${step.cost_usd:.4f}" if step.cost_usd else "")
            + ("" if status == "ok" else f" · {status}"))
    parts = [f"<p class=k>checkpoint {html.escape(str(step.starts_from))} → {html.escape(str(step.ends_at))}; "
             f"input digest {html.escape(step.input_digest)}</p>"]
    if step.payload is not None:
        parts.append("<p class=k>payload</p>" + _pre(trace.blob(step.payload)))
    if "error" in end:
        parts.append("<p class=k>error</p>" + _pre(end["error"]))
    elif step.end is not None:
        parts.append("<p class=k>state update</p>" + _pre(trace.update(step)))
    parts += [_call(trace, c) for c in step.calls]
    return (f"<details class='step {status}' id='step-{step.step}'><summary>{html.escape(head)}</summary>"
            + "".join(parts) + "</details>")


def render(trace: Trace, meta: dict[str, Any]) -> str:
    steps = trace.ordered()
    t0 = min((s.at for s in steps), default=0.0)
    summary = trace.summary()
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in (
        ("run", meta.get("run_id", trace.directory.name)), ("status", meta.get("status")),
        ("parent", (meta.get("parent") or {}).get("run_id", "")), ("steps", summary["steps"]),
        ("duration", f"{summary['duration_s']}s"), ("experiments", summary["experiments"]),
        ("LLM calls", summary["llm_calls"]), ("cost", f"${summary['cost_usd']:.4f}"),
        ("stopped", (meta.get("summary") or {}).get("stop_reason", ""))))
    body = "".join(_step(trace, s, t0) for s in steps)
    title = html.escape(f"readfirst trace {meta.get('run_id', trace.directory.name)}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{CSS}</style></head>"
            f"<body><h1>{title}</h1><table>{rows}</table><h2>Timeline</h2>{body}</body></html>\n")
