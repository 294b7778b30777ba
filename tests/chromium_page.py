"""A page opened in headless Chromium (Debian's `chromium`, which ./test.sh installs): the DOM it rendered, every
request the page made (from Chromium's own network log), and a screenshot. Used by the HTML report's tests."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync",
         # nothing reaches a network even if the page asked: a request is still logged, then fails to resolve
         "--host-resolver-rules=MAP * ~NOTFOUND"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):  # the test command installs it: missing under CI is a failure, not a skip
            pytest.fail("chromium is not installed; ./test.sh installs it (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (./test.sh installs it: apt-get install -y chromium)")
    return found


@dataclass
class Opened:
    dom: str                 # the document as Chromium parsed and rendered it
    requests: list[str]      # URLs the page itself asked for, other than file:// (should be none)
    screenshot: Path


def open_page(page: Path, scratch: Path) -> Opened:
    browser = chromium()
    netlog = scratch / "netlog.json"
    common = [browser, *FLAGS, f"--user-data-dir={scratch / 'profile'}"]
    dom = subprocess.run([*common, f"--log-net-log={netlog}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = scratch / "page.png"
    taken = subprocess.run([*common, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()],
                           capture_output=True, text=True, timeout=120)
    assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
    return Opened(dom.stdout, page_requests(netlog), shot)


def page_requests(netlog: Path) -> list[str]:
    """Requests the page made: those whose isolation key is the file:// page's. Chromium's own background
    traffic (updates, accounts) has another key and is not the page's doing."""
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if event["type"] == start_job and "file://" in params.get("network_isolation_key", "") \
                and not params.get("url", "").startswith("file:"):
            urls.append(params["url"])
    return urls


class Anchors(HTMLParser):
    """Every id in a document, and every reference: links, and the SVG plots' own (clip paths, markers)."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            value = value or ""
            if name == "id":
                self.ids.append(value)
            elif name in ("href", "xlink:href"):
                self.refs.append(value)
            else:
                self.refs += [f"#{r}" for r in re.findall(r"url\(\s*#([^)\s]+)\s*\)", value)]


def broken_links(document: str) -> list[str]:
    """References that go nowhere inside the page (to another document, or to an id the page lacks), and ids
    given twice (a reference to one of them would be ambiguous)."""
    anchors = Anchors()
    anchors.feed(document)
    ids = set(anchors.ids)
    twice = sorted({f"id {i} twice" for i in anchors.ids if anchors.ids.count(i) > 1})
    return [r for r in anchors.refs if not r.startswith("#") or r[1:] not in ids] + twice


def external_references(document: str) -> list[str]:
    """Attributes and CSS that would fetch something from elsewhere (src, href, url(), @import)."""
    return re.findall(r"""(?:src|href|xlink:href|action|poster)\s*=\s*["']?(?:[a-z]+:)?//[^"'\s>]*|url\(\s*["']?"""
                      r"""(?!#|data:)[^)]*\)|@import[^;]*""", document, flags=re.I)
