"""The file of chunk summaries in the data directory (summaries.sqlite) is read by every run with a model: one
damaged by a disk fault, written by another program or another version, or edited by hand, is said in one
sentence naming it, never a traceback; a row whose claims are not what readfirst writes is a summary not found
(the model is asked again), never claims handed to the planner as they are."""

from __future__ import annotations

import json
import sqlite3

import pytest

from readfirst.agents.summaries import SummaryCache, chunk_key
from readfirst.errors import ReadfirstError

CHUNK = {"id": "fork-1", "text": "static void f(void) {}"}
CLAIMS = [{"claim": "f is empty", "citations": ["fork-1"]}]


def refused_in_a_sentence(attack, path) -> None:
    try:
        cache = SummaryCache(path)
        cache.get(CHUNK)
    except ReadfirstError as e:
        text = str(e)
        assert str(path) in text and "\n" not in text and "delete it" in text, text
        return
    attack.escaped(f"a damaged {path.name} was opened as a file of summaries")


def test_a_file_that_is_not_a_database_is_one_sentence(attack):
    path = attack.root / "summaries.sqlite"
    path.write_bytes(b"not a database, and not empty either: " * 200)
    refused_in_a_sentence(attack, path)


def test_a_truncated_database_is_one_sentence(attack):
    path = attack.root / "summaries.sqlite"
    good = SummaryCache(path)
    for i in range(300):
        good.put({"id": f"c{i}", "text": "x" * 200 + str(i)}, CLAIMS)
    good.close()
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    try:
        cache = SummaryCache(path)
        for i in range(300):
            cache.get({"id": f"c{i}", "text": "x" * 200 + str(i)})
    except ReadfirstError as e:
        assert str(path) in str(e) and "\n" not in str(e), str(e)


def test_a_table_of_another_shape_is_one_sentence(attack):
    path = attack.root / "summaries.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE summaries (something TEXT)")
    db.commit()
    db.close()
    refused_in_a_sentence(attack, path)


def test_a_folder_in_the_files_place_is_one_sentence(attack):
    path = attack.root / "summaries.sqlite"
    path.mkdir()
    refused_in_a_sentence(attack, path)


@pytest.mark.parametrize("stored", ["not json", json.dumps({"claim": "a dict"}), json.dumps(["a string"]),
                                    json.dumps([{"claim": 42, "citations": ["fork-1"]}]),
                                    json.dumps([{"claim": "no citations"}]),
                                    json.dumps([{"claim": "x", "citations": [{"id": "fork-1"}]}])])
def test_a_row_whose_claims_are_not_readfirsts_is_a_summary_not_found(attack, stored):
    path = attack.root / "summaries.sqlite"
    SummaryCache(path).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO summaries (key, claims) VALUES (?, ?)", (chunk_key(CHUNK), stored))
    db.commit()
    db.close()
    cache = SummaryCache(path)
    found = cache.get(CHUNK)
    if found is not None:
        attack.escaped(f"the row {stored!r} was served as claims: {found!r}")
    cache.put(CHUNK, CLAIMS)  # the model asked again: its answer replaces the row
    cache.close()
    assert SummaryCache(path).get(CHUNK) == CLAIMS


def test_another_models_summary_is_not_served(attack):
    path = attack.root / "summaries.sqlite"
    first = SummaryCache(path, model="model-a")
    first.put(CHUNK, CLAIMS)
    first.close()
    assert SummaryCache(path, model="model-a").get(CHUNK) == CLAIMS
    if SummaryCache(path, model="model-b").get(CHUNK) is not None:
        attack.escaped("model-b was served model-a's summary of the chunk")
