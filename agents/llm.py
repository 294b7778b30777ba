"""The LLM seam's implementations: Anthropic's Messages API, and a scripted model for tests and replay.

Both answer `complete(messages, *, system, tools, max_tokens, agent, experiment) -> LLMResponse`, whose content
is a list of plain dict blocks exactly as the Messages API returns them, so a role never touches SDK types and a
trace can replay a response from JSON.

Retries: the anthropic SDK already retries 429, 408/409, 5xx, connection errors and timeouts with exponential
backoff and honours `retry-after`; `make_client` configures that (timeout, max_retries). A second retry loop here
would multiply the waits, so there is none.

Money: before a call its cost is bounded from above (`call_bound`: the request's size at a conservative
characters-per-token ratio, cache writes priced in, plus `max_tokens` of output) and reserved in the shared
`Budget`; a call whose bound does not fit in what is left is refused before it starts (BudgetExceeded ends the
run; ExperimentBudgetSpent, over one experiment's own cap, ends only that experiment). Reservations are held
while calls are in flight, so parallel workers cannot together spend past the limit: the run overshoots only by
what a call costs beyond its own bound (an estimate of the input that was short).

Prompts are text files in agents/prompts/, filled by `render_prompt`; untrusted text (papers, forks, build logs)
enters them only through `data_block`, which fences it and neutralizes anything that could close the fence.
"""

from __future__ import annotations

import copy
import html
import itertools
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from importlib import resources
from string import Template
from typing import Any

from ..errors import ReadfirstError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "claude-sonnet-4-6"

# USD per million tokens (input, output): Anthropic's list prices per tier. Cache writes cost 1.25x the input
# price and cache reads 0.1x. A model missing from the table is charged DEFAULT_PRICE (the Sonnet tier), with a
# warning: overcounting a cheap model is safer than undercounting an expensive one, so pass `prices=` for others.
PRICES_USD_PER_MTOK: dict[str, tuple[float, float]] = {
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-sonnet-4-5-20250929": (3.0, 15.0),
    "claude-sonnet-4-6": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-haiku-4-5-20251001": (1.0, 5.0),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-5-20251101": (5.0, 25.0),
    "claude-opus-4-6": (5.0, 25.0),
    "scripted": (3.0, 15.0),
}
DEFAULT_PRICE: tuple[float, float] = (3.0, 15.0)
CACHE_WRITE_FACTOR, CACHE_READ_FACTOR = 1.25, 0.1
_warned_unpriced: set[str] = set()


class LLMError(ReadfirstError):
    """A model call failed after the SDK's retries (or a scripted model ran out of replies)."""


class LLMUnavailable(LLMError):
    """The API refuses this configuration (bad key, no permission, unknown model): nothing later will succeed."""


class BudgetExceeded(ReadfirstError):
    """The dollar budget is spent; no further model call is started."""


class ExperimentBudgetSpent(LLMError):
    """One experiment's dollar cap would be passed by the next call: that experiment stops (a failed
    implementation), the run goes on."""


# Characters per token assumed when bounding a request's input before sending it. Claude's tokenizer gives about
# 3.5 for English and 3-3.5 for C; 2.5 keeps the bound above the real count for dense code and JSON.
CHARS_PER_TOKEN_BOUND = 2.5
# One experiment's LLM spending cap (implementation and repairs), unless the budget is given another.
DEFAULT_EXPERIMENT_USD = 1.0


def estimate_input_tokens(messages: Any, system: str = "", tools: Any = None) -> int:
    """An upper estimate of a request's input tokens from its size (no tokenizer is at hand offline)."""
    size = len(system or "") + len(json.dumps(messages, default=str)) + (len(json.dumps(tools)) if tools else 0)
    return int(size / CHARS_PER_TOKEN_BOUND) + 16


def call_bound(model: str, messages: Any, *, system: str = "", tools: Any = None, max_tokens: int = 4096,
               cached: bool = False, prices: Mapping[str, tuple[float, float]] | None = None) -> float:
    """The most a call can cost: its estimated input (as cache writes when it carries cache marks) and
    `max_tokens` of output."""
    tokens = estimate_input_tokens(messages, system, tools)
    return cost_usd(model, 0 if cached else tokens, max_tokens, cache_write_tokens=tokens if cached else 0,
                    prices=prices)


OnCall = Callable[[dict[str, Any]], None]


@dataclass
class LLMResponse:
    content: list[dict[str, Any]]
    stop_reason: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_s: float
    model: str
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0

    @property
    def text(self) -> str:
        return "\n".join(b["text"] for b in self.content if b.get("type") == "text").strip()

    @property
    def tool_uses(self) -> list[dict[str, Any]]:
        return [b for b in self.content if b.get("type") == "tool_use"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LLMResponse:
        """Tolerates keys it does not know, so old and new traces both load."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def price_for(model: str, prices: Mapping[str, tuple[float, float]] | None = None) -> tuple[float, float]:
    table = {**PRICES_USD_PER_MTOK, **(prices or {})}
    if model in table:
        return table[model]
    if model not in _warned_unpriced:  # once per model, not once per call
        _warned_unpriced.add(model)
        log.warning("no price known for model %r; charging the default %s USD/Mtok (input, output)", model,
                    DEFAULT_PRICE)
    return DEFAULT_PRICE


def cost_usd(model: str, input_tokens: int, output_tokens: int, *, cache_write_tokens: int = 0,
             cache_read_tokens: int = 0, prices: Mapping[str, tuple[float, float]] | None = None) -> float:
    p_in, p_out = price_for(model, prices)
    return (input_tokens * p_in + cache_write_tokens * p_in * CACHE_WRITE_FACTOR
            + cache_read_tokens * p_in * CACHE_READ_FACTOR + output_tokens * p_out) / 1e6


class Budget:
    """A dollar limit shared by every LLM of a run (thread-safe: workers run in parallel), and a cap per
    experiment. `reserve` takes a call's bound before it starts, `record` turns it into what the call cost."""

    def __init__(self, limit_usd: float | None = None, *, experiment_limit_usd: float | None = DEFAULT_EXPERIMENT_USD):
        self.limit_usd = limit_usd
        self.experiment_limit_usd = experiment_limit_usd
        self._lock = threading.Lock()
        self._by_agent: dict[str, dict[str, float]] = {}
        self._by_experiment: dict[str, dict[str, float]] = {}
        self._total = _zero()
        self._reserved = 0.0
        self._reserved_by_experiment: dict[str, float] = {}

    @property
    def spent_usd(self) -> float:
        return self._total["cost_usd"]

    @property
    def remaining_usd(self) -> float | None:
        return None if self.limit_usd is None else max(0.0, self.limit_usd - self.spent_usd)

    @property
    def exhausted(self) -> bool:
        return self.limit_usd is not None and self.spent_usd >= self.limit_usd

    def check(self, *, agent: str = "", experiment: str | None = None, bound: float = 0.0) -> None:
        """Raise when a call that may cost `bound` does not fit in the run's budget or the experiment's cap."""
        with self._lock:
            self._check(agent, experiment, bound)

    def _check(self, agent: str, experiment: str | None, bound: float) -> None:
        who = f"{agent or 'an agent'}" + (f" in experiment {experiment}" if experiment else "")
        if self.limit_usd is not None:
            committed = self._total["cost_usd"] + self._reserved
            if committed >= self.limit_usd or committed + bound > self.limit_usd:
                raise BudgetExceeded(
                    f"the LLM budget of ${self.limit_usd:.2f} cannot pay for the next call: ${self.spent_usd:.4f} "
                    f"spent, ${self._reserved:.4f} held by calls in flight, and this call for {who} may cost up to "
                    f"${bound:.4f}")
        if experiment is not None and self.experiment_limit_usd is not None:
            spent = self._by_experiment.get(experiment, {}).get("cost_usd", 0.0)
            held = self._reserved_by_experiment.get(experiment, 0.0)
            if spent + held + bound > self.experiment_limit_usd:
                raise ExperimentBudgetSpent(
                    f"experiment {experiment}'s LLM cap of ${self.experiment_limit_usd:.2f} cannot pay for the next "
                    f"call of {agent or 'an agent'}: ${spent:.4f} spent, and it may cost up to ${bound:.4f}")

    def reserve(self, *, agent: str = "", experiment: str | None = None, bound: float = 0.0) -> float:
        """Check and hold `bound` dollars for a call about to start; `record` (or `release`) gives them back."""
        with self._lock:
            self._check(agent, experiment, bound)
            self._reserved += bound
            if experiment is not None:
                self._reserved_by_experiment[experiment] = self._reserved_by_experiment.get(experiment, 0.0) + bound
        return bound

    def release(self, experiment: str | None, held: float) -> None:
        with self._lock:
            self._release(experiment, held)

    def _release(self, experiment: str | None, held: float) -> None:
        self._reserved = max(0.0, self._reserved - held)
        if experiment is not None and experiment in self._reserved_by_experiment:
            left = self._reserved_by_experiment[experiment] - held
            if left > 1e-12:
                self._reserved_by_experiment[experiment] = left
            else:
                del self._reserved_by_experiment[experiment]

    def record(self, *, agent: str, experiment: str | None, input_tokens: int, output_tokens: int,
               cost: float, held: float = 0.0) -> None:
        with self._lock:
            self._release(experiment, held)
            rows = [self._total, self._by_agent.setdefault(agent or "-", _zero())]
            if experiment is not None:
                rows.append(self._by_experiment.setdefault(experiment, _zero()))
            for row in rows:
                row["calls"] += 1
                row["input_tokens"] += input_tokens
                row["output_tokens"] += output_tokens
                row["cost_usd"] += cost

    def by_agent(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return copy.deepcopy(self._by_agent)

    def by_experiment(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return copy.deepcopy(self._by_experiment)

    def snapshot(self) -> dict[str, Any]:
        """Plain data for the ledger and the checkpoint; `Budget.restore` turns it back into a budget."""
        with self._lock:
            return {"limit_usd": self.limit_usd, "experiment_limit_usd": self.experiment_limit_usd,
                    "total": dict(self._total),
                    "by_agent": copy.deepcopy(self._by_agent), "by_experiment": copy.deepcopy(self._by_experiment)}

    @classmethod
    def restore(cls, snapshot: Mapping[str, Any]) -> Budget:
        budget = cls(snapshot.get("limit_usd"),
                     experiment_limit_usd=snapshot.get("experiment_limit_usd", DEFAULT_EXPERIMENT_USD))
        budget._total = {**_zero(), **snapshot.get("total", {})}
        budget._by_agent = {k: {**_zero(), **v} for k, v in snapshot.get("by_agent", {}).items()}
        budget._by_experiment = {k: {**_zero(), **v} for k, v in snapshot.get("by_experiment", {}).items()}
        return budget


def _zero() -> dict[str, float]:
    return {"calls": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}


# -- prompts -----------------------------------------------------------------------------------------------------

def render_prompt(name: str, **values: Any) -> str:
    """agents/prompts/<name>.md with $placeholders filled; a missing value is an error, not a silent blank."""
    text = (resources.files("readfirst.agents") / "prompts" / f"{name}.md").read_text(encoding="utf-8")
    return Template(text).substitute({k: str(v) for k, v in values.items()}).strip()


def data_block(tag: str, text: str, *, limit: int = 8000, **attrs: Any) -> str:
    """Untrusted text (papers, forks, build logs) fenced in <tag ...>...</tag>. Any tag inside the text that
    could open or close such a fence is neutralized, so quoted text cannot end its block and pose as ours."""
    body = text if len(text) <= limit else text[:limit] + f"\n[... {len(text) - limit} more characters cut]"
    # "<", then any spacing around an optional "/", then a fence name: "</ledger>", "< /untrusted-source".
    body = re.sub(r"<\s*(/?)\s*(untrusted-source|build-log|current-diff|ledger|hypothesis)", r"&lt;\1\2", body,
                  flags=re.IGNORECASE)
    attributes = "".join(f' {k}="{html.escape(str(v), quote=True)}"' for k, v in attrs.items() if v is not None)
    return f"<{tag}{attributes}>\n{body}\n</{tag}>"


def chunk_origin(chunk: Mapping[str, Any]) -> str:
    """Where a knowledge-base chunk comes from, for the fence around it: its origin, else kind/repo/source/path."""
    if chunk.get("origin"):
        return str(chunk["origin"])
    return " ".join(str(chunk[k]) for k in ("kind", "repo", "source", "path") if chunk.get(k)) or "unknown"


# -- Messages API shapes (used by the scripted model, the fake server and tests) ---------------------------------

_ids = itertools.count(1)


def text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def tool_use_block(name: str, input: Mapping[str, Any], id: str | None = None) -> dict[str, Any]:
    return {"type": "tool_use", "id": id or f"toolu_{next(_ids):06d}", "name": name, "input": dict(input)}


def message_json(content: str | list[dict[str, Any]], *, stop_reason: str | None = None, input_tokens: int = 100,
                 output_tokens: int = 20, model: str | None = None) -> dict[str, Any]:
    """A Messages API response body; stop_reason defaults to tool_use when a tool is called, else end_turn.
    Without a model, the fake server answers with the model requested and ScriptedLLM with its own."""
    blocks = [text_block(content)] if isinstance(content, str) else list(content)
    if stop_reason is None:
        stop_reason = "tool_use" if any(b.get("type") == "tool_use" for b in blocks) else "end_turn"
    return {"id": f"msg_{next(_ids):06d}", "type": "message", "role": "assistant", **({"model": model} if model else {}),
            "content": blocks, "stop_reason": stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}}


def _plain_block(block: Any) -> dict[str, Any]:
    """An SDK content block as the plain dict the API sent, without the SDK's empty optional fields."""
    data = block.model_dump(mode="json", exclude_none=True) if hasattr(block, "model_dump") else dict(block)
    kind = data.get("type")
    if kind == "text":
        return {"type": "text", "text": data["text"]}
    if kind == "tool_use":
        return {"type": "tool_use", "id": data["id"], "name": data["name"], "input": data.get("input", {})}
    return data


class _Accounting:
    """What both implementations share: the budget check before a call, cost and hook after it."""

    model: str
    budget: Budget | None
    on_call: OnCall | None
    prices: Mapping[str, tuple[float, float]] | None

    def _before(self, agent: str, experiment: str | None, bound: float) -> float:
        """Hold the call's bound in the budget (or refuse the call); the dollars held, for `_after`."""
        if self.budget is None:
            return 0.0
        return self.budget.reserve(agent=agent, experiment=experiment, bound=bound)

    def _after(self, request: dict[str, Any], response: LLMResponse | None, error: str | None = None, *,
               held: float = 0.0) -> None:
        if self.budget is not None:
            if response is not None:
                self.budget.record(agent=request["agent"], experiment=request["experiment"],
                                   input_tokens=response.input_tokens + response.cache_write_tokens
                                   + response.cache_read_tokens, output_tokens=response.output_tokens,
                                   cost=response.cost_usd, held=held)
            else:
                self.budget.release(request["experiment"], held)
        if self.on_call is not None:
            self.on_call({**request, "response": response.to_dict() if response else None, "error": error,
                          "input_tokens": response.input_tokens if response else 0,
                          "output_tokens": response.output_tokens if response else 0,
                          # prompt tokens a cache wrote or served: billed apart, counted in the budget's input
                          "cache_write_tokens": response.cache_write_tokens if response else 0,
                          "cache_read_tokens": response.cache_read_tokens if response else 0,
                          "cost_usd": response.cost_usd if response else 0.0,
                          "latency_s": response.latency_s if response else None})

    def _response(self, body: Mapping[str, Any], latency_s: float) -> LLMResponse:
        usage = body.get("usage") or {}
        tokens = {k: int(usage.get(k) or 0) for k in ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                                                      "cache_read_input_tokens")}
        model = body.get("model") or self.model
        return LLMResponse(
            content=[_plain_block(b) for b in body.get("content", [])], stop_reason=body.get("stop_reason"),
            input_tokens=tokens["input_tokens"], output_tokens=tokens["output_tokens"],
            cost_usd=cost_usd(model, tokens["input_tokens"], tokens["output_tokens"],
                              cache_write_tokens=tokens["cache_creation_input_tokens"],
                              cache_read_tokens=tokens["cache_read_input_tokens"], prices=self.prices),
            latency_s=latency_s, model=model, cache_write_tokens=tokens["cache_creation_input_tokens"],
            cache_read_tokens=tokens["cache_read_input_tokens"])


def make_client(api_key: str, *, base_url: str | None = None, timeout_s: float = 300.0, max_retries: int = 4):
    """An anthropic.Anthropic client whose own retries (backoff, retry-after) cover 429, 5xx and timeouts."""
    import anthropic  # here, not at import time: importing readfirst opens no client and stays light
    return anthropic.Anthropic(api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=max_retries)


class AnthropicLLM(_Accounting):
    """The Messages API through a client the caller built (see make_client)."""

    def __init__(self, client: Any, *, model: str = DEFAULT_MODEL, budget: Budget | None = None,
                 on_call: OnCall | None = None, prices: Mapping[str, tuple[float, float]] | None = None,
                 cache_prompts: bool = True, max_reply_tokens: int | None = None):
        self.client, self.model, self.budget, self.on_call, self.prices = client, model, budget, on_call, prices
        # An agent's loop resends its whole conversation each step; cache marks make the repeated prefix cost
        # a tenth of the input price instead of the full price.
        self.cache_prompts = cache_prompts
        # A cap on every reply whatever a role asks for: a local model generates tens of tokens per second, and a
        # weak one fills whatever it is allowed (Gemma 270M wrote 4,096 tokens to every planning call). The
        # recorded request keeps what the role asked, so a replay matches either way.
        self.max_reply_tokens = max_reply_tokens

    def complete(self, messages: list[dict[str, Any]], *, system: str = "", tools: list[dict[str, Any]] | None = None,
                 max_tokens: int = 4096, agent: str = "", experiment: str | None = None) -> LLMResponse:
        import anthropic
        # A cache write costs 1.25x the input price and pays only when the prefix is sent again: in an agent's
        # tool loop (its conversation grows turn by turn), not in a one-shot call such as a summary.
        cache = self.cache_prompts and (bool(tools) or len(messages) > 1)
        sent_max = min(max_tokens, self.max_reply_tokens) if self.max_reply_tokens else max_tokens
        held = self._before(agent, experiment, call_bound(self.model, messages, system=system, tools=tools,
                                                          max_tokens=sent_max, cached=cache, prices=self.prices))
        # A copy of the list: the caller appends to its conversation after the call, the hook keeps what was sent.
        request = {"messages": list(messages), "system": system, "tools": tools, "max_tokens": max_tokens,
                   "agent": agent, "experiment": experiment, "model": self.model}
        params: dict[str, Any] = {"model": self.model, "max_tokens": sent_max,
                                  "messages": _with_cache_mark(messages) if cache else messages}
        if system:
            params["system"] = [{"type": "text", "text": system,
                                 **({"cache_control": {"type": "ephemeral"}} if cache else {})}]
        if tools:
            params["tools"] = tools
        start = time.monotonic()
        try:
            message = self.client.messages.create(**params)
        except (anthropic.AuthenticationError, anthropic.PermissionDeniedError, anthropic.NotFoundError) as e:
            self._after(request, None, error=str(e), held=held)
            raise LLMUnavailable(f"the Anthropic API refuses this configuration (model {self.model}): {e}") from e
        except anthropic.AnthropicError as e:
            self._after(request, None, error=str(e), held=held)
            raise LLMError(f"Anthropic API call for {agent or 'an agent'} failed after retries: "
                           f"{type(e).__name__}: {e}") from e
        body = message.model_dump(mode="json", exclude_none=True)
        body["content"] = list(message.content)
        response = self._response(body, time.monotonic() - start)
        self._after(request, response, held=held)
        return response


def _with_cache_mark(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy of the messages whose last block carries a cache breakpoint; the caller's list is left alone."""
    if not messages:
        return messages
    marked = list(messages[:-1])
    last = dict(messages[-1])
    content = last.get("content")
    blocks = [text_block(content)] if isinstance(content, str) else [dict(b) for b in content or []]
    if blocks:
        blocks[-1]["cache_control"] = {"type": "ephemeral"}
        last["content"] = blocks
    marked.append(last)
    return marked


Reply = LLMResponse | Mapping[str, Any] | Callable[[dict[str, Any]], "LLMResponse | Mapping[str, Any]"]


class ScriptedLLM(_Accounting):
    """Replies from a list, in order: LLMResponse, a Messages API body (see message_json), or a callable given
    the request (messages, system, tools, ...) that returns one. Records every request in `calls`."""

    def __init__(self, replies: Iterable[Reply], *, model: str = "scripted", budget: Budget | None = None,
                 on_call: OnCall | None = None, prices: Mapping[str, tuple[float, float]] | None = None):
        self.replies = list(replies)
        self.model, self.budget, self.on_call, self.prices = model, budget, on_call, prices
        self.calls: list[dict[str, Any]] = []

    def complete(self, messages: list[dict[str, Any]], *, system: str = "", tools: list[dict[str, Any]] | None = None,
                 max_tokens: int = 4096, agent: str = "", experiment: str | None = None) -> LLMResponse:
        held = self._before(agent, experiment, call_bound(self.model, messages, system=system, tools=tools,
                                                          max_tokens=max_tokens, prices=self.prices))
        # Deep copies: callers append to their conversation after the call, and the record must show what was sent.
        request = {"messages": copy.deepcopy(messages), "system": system, "tools": copy.deepcopy(tools),
                   "max_tokens": max_tokens, "agent": agent, "experiment": experiment, "model": self.model}
        index = len(self.calls)
        self.calls.append(request)
        if index >= len(self.replies):
            self._after(request, None, error="script exhausted", held=held)
            raise LLMError(f"the scripted LLM has no reply left for call {index + 1} ({len(self.replies)} scripted)")
        reply = self.replies[index]
        try:
            if callable(reply):
                reply = reply(request)
            response = reply if isinstance(reply, LLMResponse) else self._response(reply, 0.0)
        except Exception:
            self._after(request, None, error="unusable scripted reply", held=held)
            raise
        self._after(request, response, held=held)
        return response
