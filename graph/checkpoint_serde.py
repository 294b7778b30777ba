"""The only serializer readfirst opens a checkpointer with: it revives plain data and nothing else.

LangGraph's default (JsonPlusSerializer) rebuilds any module.name a checkpoint names, calling it with arguments
from the file; a run folder is data someone may send, so an edited checkpoints.sqlite would run its command on
`trace show`. Even its strict mode only logs a blocked name and goes on with the raw payload. Here a checkpoint is
msgpack of dicts, lists, strings, numbers and bytes (graph/state.py keeps the state so), plus the one LangGraph
type our graph writes, Send (the experiment fan-out). Anything else refuses the whole folder in one sentence.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

import ormsgpack
from langgraph.checkpoint.serde.jsonplus import EXT_CONSTRUCTOR_POS_ARGS, JsonPlusSerializer
from langgraph.types import Send

from ..errors import RunFolderRefused

_OPTIONS = ormsgpack.OPT_NON_STR_KEYS
_PLAIN_TYPES = ("null", "bytes", "bytearray")


class _NotData(Exception):
    pass


def _revive(named: list[str], code: int, data: bytes) -> Any:
    """ormsgpack's ext_hook: a Send is rebuilt from its node name and plain argument; every other extension is
    recorded in `named` (ormsgpack turns the hook's exception into a bare "ext_hook failed") and refused."""
    inner = ormsgpack.unpackb(data, ext_hook=partial(_revive, named), option=_OPTIONS)
    if code == EXT_CONSTRUCTOR_POS_ARGS and _is_send(inner):
        node, arg = inner[2][:2]
        return Send(node, arg)
    named.append(_name_of(code, inner))
    raise _NotData(named[-1])


def _is_send(inner: Any) -> bool:
    return (isinstance(inner, list) and len(inner) == 3 and inner[:2] == ["langgraph.types", "Send"]
            and isinstance(inner[2], list) and len(inner[2]) == 2 and isinstance(inner[2][0], str))


def _name_of(code: int, inner: Any) -> str:
    if isinstance(inner, list) and len(inner) >= 2 and all(isinstance(x, str) for x in inner[:2]):
        return f"{inner[0]}.{inner[1]}"[:120]
    return f"msgpack extension {code}"


class PlainDataSerializer(JsonPlusSerializer):
    """Writes as LangGraph does (msgpack); reads back only what graph state may hold. `source` is the file the
    refusal names."""

    def __init__(self, source: Path):
        super().__init__(allowed_msgpack_modules=None, allowed_json_modules=None)
        self.source = source

    def with_msgpack_allowlist(self, extra_allowlist: Iterable[Any]) -> PlainDataSerializer:
        # LANGGRAPH_STRICT_MSGPACK makes LangGraph widen the allowlist from the state's schema; ours is fixed
        return self

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        """What is written must read back: state holding anything but plain data is a bug, caught here rather
        than as a run that cannot be resumed."""
        typed = super().dumps_typed(obj)
        try:
            self.loads_typed(typed)
        except RunFolderRefused as e:
            raise TypeError(f"graph state holds something a checkpoint cannot keep as plain data: {e}") from None
        return typed

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        kind, blob = data
        if kind in _PLAIN_TYPES:
            return super().loads_typed(data)
        if kind != "msgpack":
            raise self._refused(f"a checkpoint in an encoding readfirst never writes ({str(kind)[:40]!r})")
        named: list[str] = []
        try:
            return ormsgpack.unpackb(blob, ext_hook=partial(_revive, named), option=_OPTIONS)
        except (ValueError, TypeError) as e:  # ormsgpack's decode errors are ValueErrors
            what = f"a checkpoint names {named[0]}" if named else f"a checkpoint does not decode ({str(e)[:80]})"
            raise self._refused(what) from None

    def _refused(self, what: str) -> RunFolderRefused:
        return RunFolderRefused(f"{self.source} was refused: {what}, where only plain data may be, so the run "
                                f"folder was altered or damaged and is not opened (opening it could run code)")
