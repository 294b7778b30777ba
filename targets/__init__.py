"""The targets: what readfirst optimizes, each behind the Target interface (readfirst.protocols.Target).

A target is named by a *spec*, plain data stored with a run so that --resume, trace replay and trace fork
rebuild the same target: {"name": "llama.cpp" | "config", "source", "ref", "config_file", "options"}.
- llama.cpp: the pinned sdist (or a git URL / path of a llama.cpp tree); options: model, quant, n_prompt,
  n_gen, threads, flash_attn.
- config: any project a readfirst.toml describes (its build, test and bench commands and its objective).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ReadfirstError

KNOWN = ("llama.cpp", "config")
Say = Callable[[str], None]


def make_spec(name: str | None, *, source: str, ref: str | None = None, config_file: str | Path | None = None,
              options: dict[str, Any] | None = None, source_given: bool = False) -> dict[str, Any]:
    """The spec for what the user named. No name: `config` when a readfirst.toml is given or sits at the root
    of a local source, llama.cpp otherwise. An unknown name is an error listing the known ones.
    `source_given`: the command line named the source; with a config file given too, it replaces the file's."""
    from .config_file import ConfigError, find_config
    if name is not None and name not in KNOWN:
        raise ReadfirstError(f"unknown target {name!r}; known: {', '.join(KNOWN)}")
    found = Path(config_file).expanduser().resolve() if config_file else find_config(source)
    if config_file and not found.is_file():
        raise ConfigError(f"{found}: no such file")
    if name is None:
        name = "config" if found is not None else "llama.cpp"
    if name == "config":
        if found is None:
            raise ConfigError(f"the config target needs a readfirst.toml: none at {source}; pass --target-config "
                              f"FILE")
        spec = {"name": "config", "config_file": str(found), "source": source, "ref": ref}
        if config_file and source_given:
            spec["source_override"] = source
        return spec
    return {"name": "llama.cpp", "source": source, "ref": ref, "options": dict(options or {})}


def sandbox_packages(spec: dict[str, Any]) -> tuple[str, ...]:
    """Debian packages the target's sandbox image needs beyond the base toolchain."""
    if spec.get("name") == "config":
        from .config_file import load_config
        return load_config(spec["config_file"], spec.get("source_override")).apt
    return ()


def open_target(spec: dict[str, Any], *, paths, sandbox, say: Say = lambda _: None):
    """The target a spec names, its source prepared (fetched once into the cache)."""
    from ..sources import prepare_source
    name = spec.get("name", "llama.cpp")
    if name == "config":
        from .config_file import load_config
        from .config_target import ConfigTarget
        config = load_config(spec["config_file"], spec.get("source_override"))
        say(f"preparing the source of {config.name}: {config.source}")
        ref = spec.get("ref") if spec.get("source_override") else config.ref
        repo = prepare_source(config.source, paths.sources, paths.sdists, ref=ref)
        return ConfigTarget(paths, sandbox, repo, config, say=say)
    if name == "llama.cpp":
        from .llama_cpp.target import BenchOptions, LlamaCppTarget
        options = dict(spec.get("options") or {})
        say(f"preparing the source: {spec.get('source', 'llama.cpp')}")
        repo = prepare_source(spec.get("source", "llama.cpp"), paths.sources, paths.sdists, ref=spec.get("ref"))
        shape = BenchOptions(n_prompt=int(options.get("n_prompt", 512)), n_gen=int(options.get("n_gen", 128)),
                             threads=int(options.get("threads", 2)), flash_attn=bool(options.get("flash_attn", True)))
        model = Path(options["model"]) if options.get("model") else None
        return LlamaCppTarget(paths, sandbox, repo, model=model, quant=options.get("quant", "Q4_0"), shape=shape,
                              say=say)
    raise ReadfirstError(f"unknown target {name!r}; known: {', '.join(KNOWN)}")
