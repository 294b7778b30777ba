"""LLM-mode research steps that answer in JSON: findings from knowledge-base chunks, ranked hypotheses from
findings.

A model's JSON is checked, never trusted: an answer that does not parse is asked for once more, then returned as
a CheckedList with `error` set (the run goes on and the error stays visible). Items that parse but break the rules
(a finding citing no given chunk, a hypothesis citing no known finding or repeating a tried one) are dropped with
their reason. BudgetExceeded and LLMUnavailable propagate: they end the run, not one step.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .briefing import outcome_line, same_change
from .context import prompt_context
from .llm import LLMError, LLMUnavailable, chunk_origin, data_block, render_prompt, text_block
from .summaries import SummaryCache


@dataclass
class CheckedList:
    items: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)  # {"item": what the model said, "reason": why}
    error: str | None = None  # the model's answer was unusable (after one retry) or the call failed
    questions: list[str] = field(default_factory=list)  # the planner's own knowledge-base queries

    # It reads as the list of its items, so `for finding in summarize_findings(...)` works; `error` stays visible.
    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize_findings(llm: Any, query: str, chunks: Sequence[Mapping[str, Any]], *, agent: str = "researcher",
                       experiment: str | None = None, max_tokens: int = 4096, about: Mapping[str, Any] | None = None,
                       cache: SummaryCache | None = None) -> CheckedList:
    """Findings {"id", "claim", "citations": [chunk ids]} that the chunks support, each citing at least one.
    `about`: the target's describe(), in the model's instructions. With a `cache`, a chunk summarized before (by
    any query, round or run) costs nothing: only the others are sent, and what is said of them is kept."""
    known = [str(c["id"]) for c in chunks if c.get("id") is not None]
    earlier = {str(c["id"]): cache.get(c) for c in chunks if cache is not None and c.get("id") is not None}
    fresh = [c for c in chunks if earlier.get(str(c.get("id"))) is None]
    result = CheckedList()
    said: list[Mapping[str, Any]] = [claim for c in chunks for claim in earlier.get(str(c.get("id"))) or []]
    if fresh or not chunks:
        parsed, result.error = _summarize(llm, query, fresh, agent=agent, experiment=experiment,
                                          max_tokens=max_tokens, about=about)
        new = _checked_claims(parsed or [], [str(c["id"]) for c in fresh if c.get("id") is not None], result)
        if cache is not None and result.error is None:
            for c in fresh:  # a chunk that yielded nothing is remembered too: it is not worth asking again
                cache.put(c, [item for item in new if str(c.get("id")) in item["citations"]])
        said += new
    seen: set[str] = set()
    for item in said:
        citations = _known_ids(item.get("citations"), known)
        if citations and _normal(item["claim"]) not in seen:
            seen.add(_normal(item["claim"]))
            result.items.append({"id": _stable_id("f", item["claim"]), "claim": item["claim"], "citations": citations})
    return result


def _summarize(llm: Any, query: str, chunks: Sequence[Mapping[str, Any]], *, agent: str, experiment: str | None,
               max_tokens: int, about: Mapping[str, Any] | None):
    excerpts = "\n\n".join(data_block("untrusted-source", str(c.get("text", "")), limit=3000, id=c.get("id"),
                                      origin=chunk_origin(c)) for c in chunks)
    task = render_prompt("summarize_task", query=query, chunks=excerpts or "(none)")
    return _ask_for_list(llm, render_prompt("summarize_system", **prompt_context(about)), task, agent=agent,
                         experiment=experiment, max_tokens=max_tokens)


def _checked_claims(parsed: list[dict[str, Any]], known: Sequence[str], result: CheckedList) -> list[dict[str, Any]]:
    """The model's claims that cite a given chunk, each once; the rest go to result.dropped with their reason."""
    out, seen = [], set()
    for raw in parsed:
        claim = raw.get("claim")
        if not isinstance(claim, str) or not claim.strip():
            result.dropped.append({"item": raw, "reason": "no claim"})
            continue
        citations = _known_ids(raw.get("citations"), known)
        if not citations:
            result.dropped.append({"item": raw, "reason": "cites none of the given chunks"})
        elif _normal(claim) in seen:
            result.dropped.append({"item": raw, "reason": "repeats an earlier finding"})
        else:
            seen.add(_normal(claim))
            out.append({"claim": claim.strip(), "citations": citations})
    return out


MAX_QUESTIONS = 4


def plan_hypotheses(llm: Any, facts: Sequence[Any], findings: Sequence[Mapping[str, Any]], tried: Iterable[Any],
                    *, n: int = 5, experiment: str | None = None, max_tokens: int = 4096,
                    about: Mapping[str, Any] | None = None) -> CheckedList:
    """At most n hypotheses, best first, each {"id", "key", "kind": "llm", "source": "llm", "title", "rationale",
    "files", "functions", "expected_gain", "citations" (finding ids), "chunk_ids" (the chunks those findings
    cite), "evidence" (the cited findings as {"id", "origin", "text"} for the implementer's prompt)}; and in
    `questions` the knowledge-base queries the model asks for its next round of reading.
    `tried`: titles, hypothesis keys, or experiments as dicts (briefing.tried_experiments: title, key, decision,
    effect, reason, files, functions); the model is shown each with its outcome. A hypothesis is dropped when
    its title or key matches a tried one, or when it changes exactly the functions a discarded experiment
    changed (a reworded repeat is recognized by what it changes, not by its words)."""
    by_id = {str(f["id"]): f for f in findings if f.get("id") is not None}
    tried_titles, tried_keys = set(), set()
    outcomes: list[str] = []     # the ledger's experiments, with what came of them
    bare: set[str] = set()       # titles or keys given alone
    changes: list[Mapping[str, Any]] = []  # tried experiments that say what they changed
    for t in tried:
        if isinstance(t, Mapping):
            text = str(t.get("title") or "")
            tried_keys.add(str(t.get("key") or ""))
            if text:
                outcomes.append(outcome_line(t))
            if t.get("functions"):
                changes.append(t)
        else:
            text = str(t)
            bare.add(_normal(text))
        tried_keys.add(text)
        tried_titles.add(_normal(text))
    tried_titles.discard("")
    tried_keys.discard("")
    tried_text = "\n".join([*outcomes, *(f"- {t}" for t in sorted(bare - {""}))])
    # Newest first: findings accumulate over research rounds, and a cut must drop the oldest, not what was
    # paid for last.
    findings_text = "\n".join(f"- {fid}: {claim}" for fid, claim in distinct_claims(reversed(list(by_id.items()))))
    task = render_prompt(
        "hypothesize_task", n=n, questions=MAX_QUESTIONS,
        facts="\n".join(f"- {f if isinstance(f, str) else json.dumps(f, sort_keys=True)}" for f in facts) or "(none)",
        findings=data_block("untrusted-source", findings_text, limit=40_000, id="findings") if by_id else "(none)",
        tried=data_block("ledger", tried_text, limit=20_000) if tried_text else "(nothing yet)")
    parsed, error = _ask_for_list(llm, render_prompt("hypothesize_system", **prompt_context(about)), task,
                                  agent="hypothesize",
                                  experiment=experiment, max_tokens=max_tokens, parse=_parse_plan)
    result = CheckedList(error=error)
    for raw in parsed or []:
        if "question" in raw and "title" not in raw:
            question = raw.get("question")
            if isinstance(question, str) and question.strip() and len(result.questions) < MAX_QUESTIONS:
                result.questions.append(" ".join(question.split())[:300])
            continue
        title = raw.get("title")
        cited = _known_ids(raw.get("findings"), list(by_id))
        key = hypothesis_key(title) if isinstance(title, str) else ""
        functions = _strings(raw.get("functions"))
        repeated = same_change(functions, changes)
        if not isinstance(title, str) or not title.strip():
            reason = "no title"
        elif not cited:
            reason = "cites no known finding"
        elif _normal(title) in tried_titles or key in tried_keys:
            reason = "repeats a tried or an earlier hypothesis"
        elif repeated is not None:
            reason = (f"changes the same functions ({', '.join(functions)}) as {repeated.get('id') or 'the tried'} "
                      f"'{repeated.get('title')}' ({repeated.get('decision')})")
        elif len(result.items) >= n:
            reason = f"beyond the {n} asked for"
        else:
            reason = None
        if reason:
            result.dropped.append({"item": raw, "reason": reason})
            continue
        tried_titles.add(_normal(title))
        if functions:  # a second hypothesis of this answer changing the same functions is a repeat too
            changes.append({"title": title.strip(), "decision": "planned", "functions": functions})
        result.items.append({
            "id": f"H{key[:8]}", "key": key, "kind": "llm", "source": "llm", "title": title.strip(),
            "rationale": str(raw.get("rationale") or ""), "expected_gain": str(raw.get("expected_gain") or ""),
            "hot_spot": str(raw.get("hot_spot") or "")[:200],
            "files": _strings(raw.get("files")), "functions": functions,
            "citations": cited,
            "chunk_ids": list(dict.fromkeys(_chunk_id(c) for fid in cited for c in by_id[fid].get("citations") or [])),
            "evidence": [_evidence(fid, by_id[fid]) for fid in cited]})
    return result


def distinct_claims(findings: Iterable[tuple[str, Mapping[str, Any]]]) -> list[tuple[str, str]]:
    """(id, claim) of each claim once, under its first id: the same claim found by several queries, rounds or
    roles is one line of a prompt, not thirteen (a hypothesis may still cite any of its ids)."""
    seen: set[str] = set()
    out = []
    for fid, f in findings:
        claim = str(f.get("claim", ""))
        if _normal(claim) not in seen:
            seen.add(_normal(claim))
            out.append((fid, claim))
    return out


def _strings(value: Any) -> list[str]:
    return [v.strip() for v in value if isinstance(v, str) and v.strip()] if isinstance(value, list) else []


def _parse_plan(text: str) -> list[dict[str, Any]]:
    """The planner's answer: {"hypotheses": [...], "questions": [...]} (questions become {"question": q}
    items), or a bare list of hypotheses."""
    try:
        value = json.loads(_fenced(text))
    except json.JSONDecodeError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("hypotheses"), list):
        items = [h for h in value["hypotheses"] if isinstance(h, dict)]
        return items + [{"question": q} for q in value.get("questions") or [] if isinstance(q, str)]
    return parse_json_list(text)


def _fenced(text: str) -> str:
    m = re.search(r"```(?:json)?\s*(.*?)```", text, flags=re.DOTALL)
    return (m.group(1) if m else text).strip()


def hypothesis_key(title: str) -> str:
    """The ledger's key for an LLM hypothesis: its normalized title, so a re-worded repeat has the same key."""
    return hashlib.sha256(json.dumps(["llm", {"title": _normal(title)}]).encode()).hexdigest()[:16]


def _chunk_id(citation: Any) -> str:
    return str(citation.get("id")) if isinstance(citation, Mapping) else str(citation)


def _evidence(fid: str, finding: Mapping[str, Any]) -> dict[str, Any]:
    """A finding as the implementer reads it: the claim, then the origin and snippet of each chunk it cites."""
    lines = [str(finding.get("claim", ""))]
    for c in finding.get("citations") or []:
        if isinstance(c, Mapping):
            lines.append(f"- {c.get('origin') or c.get('id')}: {c.get('snippet') or c.get('text') or ''}")
    return {"id": fid, "origin": f"finding of {finding.get('role') or 'research'}", "text": "\n".join(lines)}


def parse_json_list(text: str) -> list[dict[str, Any]]:
    """The list of objects in a model's answer: bare JSON, a fenced block, or the outermost [...] / {...} in prose.
    An object holding one list ({"hypotheses": [...]}) counts as that list. Raises ValueError saying what is wrong."""
    candidates = [text.strip()]
    candidates += [m.strip() for m in re.findall(r"```(?:json)?\s*(.*?)```", text, flags=re.DOTALL)]
    list_start, object_start = text.find("["), text.find("{")
    if 0 <= list_start < text.rfind("]"):
        candidates.append(text[list_start:text.rindex("]") + 1])
    # An object alone, not one cut out of a truncated list: that would silently lose the rest of the list.
    if 0 <= object_start < text.rfind("}") and not 0 <= list_start < object_start:
        candidates.append(text[object_start:text.rindex("}") + 1])
    problem = "the answer is empty" if not text.strip() else "no JSON found"
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError as e:
            problem = f"invalid JSON ({e})"
            continue
        if isinstance(value, dict):
            lists = [v for v in value.values() if isinstance(v, list)]
            value = lists[0] if len(lists) == 1 else [value]
        if isinstance(value, list) and all(isinstance(v, dict) for v in value):
            return value
        problem = "expected a JSON list of objects"
    raise ValueError(problem)


def _ask_for_list(llm: Any, system: str, task: str, *, agent: str, experiment: str | None, max_tokens: int,
                  parse: Callable[[str], list[dict[str, Any]]] | None = None
                  ) -> tuple[list[dict[str, Any]] | None, str | None]:
    """(items, None), or (None, why) after one retry that shows the model what was wrong with its answer."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": task}]
    problem = ""
    for _ in range(2):
        try:
            response = llm.complete(messages, system=system, max_tokens=max_tokens, agent=agent,
                                    experiment=experiment)
        except LLMUnavailable:
            raise
        except LLMError as e:
            return None, f"model call failed: {e}"
        try:
            return (parse or parse_json_list)(response.text), None
        except ValueError as e:
            problem = str(e)
        messages += [{"role": "assistant", "content": response.content or [text_block("(empty answer)")]},
                     {"role": "user", "content": render_prompt("json_retry", problem=problem)}]
    return None, f"the model's answer was not usable JSON, even after a retry: {problem}"


def _known_ids(value: Any, known: Sequence[str]) -> list[str]:
    if not isinstance(value, list):
        value = [value] if isinstance(value, (str, int)) else []
    wanted = {str(v) for v in value}
    return [k for k in known if k in wanted]


def _normal(title: str) -> str:
    """Titles compare without case, punctuation or spacing: "Fuse RMS-norm + mul" repeats "fuse rms norm mul"."""
    return " ".join(re.sub(r"[^\w]+", " ", title.casefold()).split())


def _stable_id(prefix: str, text: str) -> str:  # findings: content-derived, so a re-run yields the same ids
    return f"{prefix}-{hashlib.sha1(_normal(text).encode()).hexdigest()[:10]}"
