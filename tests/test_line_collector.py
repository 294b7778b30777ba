"""The sandbox's collector of marked lines (METRIC, KLD) over a whole output stream, fed as the engine's attach
stream cuts it: a line holding a marker comes back whole, or the result says it could not (capped)."""

from __future__ import annotations

from readfirst.sandbox.docker_sandbox import _LineCollector


def collect(*chunks: bytes, max_lines: int = 10, max_line: int = 64) -> _LineCollector:
    lines = _LineCollector("METRIC", max_lines, max_line)
    for chunk in chunks:
        lines.feed(chunk)
    lines.end_line()
    return lines


def test_marked_lines_come_back_whole_wherever_the_stream_cuts_them():
    lines = collect(b"noise\nMET", b"RIC a=1\nmore\nx METRIC b=2", b"\n")
    assert lines.lines == ["METRIC a=1", "x METRIC b=2"] and not lines.capped


def test_more_marked_lines_than_kept_is_said():
    lines = collect(b"METRIC a=1\n" * 3, max_lines=2)
    assert lines.lines == ["METRIC a=1"] * 2 and lines.capped


def test_an_overlong_line_holding_the_marker_is_said_in_one_chunk_or_many():
    assert collect(b"x" * 100 + b"METRIC a=1" + b"x" * 100 + b"\n").capped
    assert collect(b"x" * 100, b"METRIC a=1\n").capped
    # the line overflows before the marker's chunk and again after it: the marker must not be trimmed unseen
    assert collect(b"x" * 100, b"METRIC a=1" + b"x" * 100, b"\n").capped
    assert collect(b"x" * 100, b"x" * 30 + b"METR", b"IC a=1" + b"x" * 100, b"\n").capped


def test_an_overlong_line_without_the_marker_is_not_news():
    lines = collect(b"x" * 1000, b"x" * 1000 + b"\nMETRIC a=1\n")
    assert lines.lines == ["METRIC a=1"] and not lines.capped
