"""Where readfirst keeps its state, and the knobs shared by every command.

One data directory holds everything: caches (sdists, sources, builds, models, ccache), the knowledge base and
runs. `--home` or READFIRST_HOME choose it; otherwise the user's data directory. The expensive artifacts can live
elsewhere (READFIRST_CACHE), so that tests with a throw-away home still reuse one llama.cpp build and one model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs


@dataclass(frozen=True)
class Paths:
    home: Path
    cache: Path

    @classmethod
    def resolve(cls, home: str | Path | None = None, cache: str | Path | None = None,
                environ: dict[str, str] | None = None) -> "Paths":
        env = os.environ if environ is None else environ
        home_path = Path(home or env.get("READFIRST_HOME") or platformdirs.user_data_dir("readfirst"))
        cache_path = Path(cache or env.get("READFIRST_CACHE") or home_path / "cache")
        return cls(home=home_path.expanduser().resolve(), cache=cache_path.expanduser().resolve())

    # Each place is a property so that nothing is created before it is needed.
    @property
    def sdists(self) -> Path:
        return self.cache / "sdists"

    @property
    def sources(self) -> Path:
        return self.cache / "sources"

    @property
    def builds(self) -> Path:
        return self.cache / "builds"

    @property
    def models(self) -> Path:
        return self.cache / "models"

    @property
    def ccache(self) -> Path:
        return self.cache / "ccache"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def runs(self) -> Path:
        return self.home / "runs"

    @property
    def knowledge_base(self) -> Path:
        return self.home / "knowledge_base"

    @property
    def summaries(self) -> Path:
        """The model's summaries of knowledge-base chunks, by chunk and text digest: paid for once, in any run."""
        return self.home / "summaries.sqlite"
