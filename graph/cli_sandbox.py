"""`readfirst sandbox ...` and `readfirst model ...`: the base image, leftovers, benchmarks, the model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import ReadfirstError
from ..sandbox import engine, image
from ..records import BenchResult, to_dict
from ..sandbox.docker_sandbox import collect_garbage
from ..targets import make_spec
from ..targets.llama_cpp.model import QUANT_TYPES, validate_gguf
from ..targets.llama_cpp.target import BenchOptions
from .cli_common import AppContext, app_context
from .deps import compose_target

sandbox_app = typer.Typer(help="The Docker sandbox: base image, leftover containers, benchmarks.",
                          no_args_is_help=True)
model_app = typer.Typer(help="Models to benchmark: a synthetic TinyLlama-shaped GGUF, or a real one.",
                        no_args_is_help=True)


@sandbox_app.command("image")
def image_cmd(ctx: typer.Context,
              rebuild: bool = typer.Option(False, "--rebuild", help="Build it again even when it exists."),
              as_json: bool = typer.Option(False, "--json", help="Print the image as JSON.")) -> None:
    """Build (once) the base image: C/C++ toolchain, cmake, ccache, git, python3."""
    app = app_context(ctx)
    client = engine.require_engine()
    tag = image.ensure_image(client, rebuild=rebuild, say=app.say)
    if as_json:
        app.emit_json({"image": tag, "id": client.images.get(tag).id, "rebuilt": rebuild})
    else:
        app.console.print(tag)


@sandbox_app.command("gc")
def gc_cmd(ctx: typer.Context,
           everything: bool = typer.Option(False, "--all", help="Also remove containers of live readfirst "
                                                                "processes."),
           as_json: bool = typer.Option(False, "--json", help="Print what was removed as JSON.")) -> None:
    """Remove sandbox containers left behind by readfirst processes that are gone."""
    app = app_context(ctx)
    n = collect_garbage(engine.require_engine(), everything=everything)
    if as_json:
        app.emit_json({"removed_containers": n, "all": everything})
    else:
        app.console.print(f"removed {n} container{'s' if n != 1 else ''}")


def _check_quant(quant: str) -> str:
    if quant not in QUANT_TYPES:
        raise typer.BadParameter(f"unknown type {quant!r}; choose one of {', '.join(QUANT_TYPES)}")
    return quant


@sandbox_app.command("bench")
def bench_cmd(ctx: typer.Context,
              patch: Optional[Path] = typer.Option(None, "--patch", exists=True, dir_okay=False,
                                                   help="A unified diff against the baseline: built, tested, "
                                                        "logits-checked and benchmarked beside the baseline."),
              source: str = typer.Option("llama.cpp", "--source", help="llama.cpp (the pinned sdist), a git URL, "
                                                                      "or a local path."),
              ref: Optional[str] = typer.Option(None, "--ref", help="Git ref, with a git URL or repository path."),
              model: Optional[Path] = typer.Option(None, "--model", help="A real GGUF model instead of the "
                                                                         "synthetic one."),
              quant: str = typer.Option("Q4_0", "--quant", callback=_check_quant,
                                        help="Quantization of the synthetic model."),
              n_prompt: int = typer.Option(512, "-p", "--n-prompt", min=0, help="Prompt tokens (pp test)."),
              n_gen: int = typer.Option(128, "-n", "--n-gen", min=0, help="Generated tokens (tg test)."),
              threads: int = typer.Option(2, "-t", "--threads", min=1),
              flash_attn: bool = typer.Option(True, "--flash-attn/--no-flash-attn"),
              repetitions: int = typer.Option(5, "-r", "--repetitions", min=1),
              as_json: bool = typer.Option(False, "--json", help="Print the results as JSON.")) -> None:
    """Build llama.cpp in the sandbox and benchmark it with llama-bench (and a patch beside it)."""
    app = app_context(ctx)
    if model is not None:
        validate_gguf(model)  # a bad path fails before any build starts
    spec = make_spec("llama.cpp", source=source, ref=ref,
                     options={"model": str(model.resolve()) if model else None, "quant": quant, "n_prompt": n_prompt,
                              "n_gen": n_gen, "threads": threads, "flash_attn": flash_attn})
    _, target = compose_target(app.paths, spec, say=app.say)
    baseline = target.prepare()
    model_path = Path(baseline.variant["model"])
    options = BenchOptions(n_prompt=n_prompt, n_gen=n_gen, threads=threads, flash_attn=flash_attn,
                           repetitions=repetitions)
    report: dict = {"baseline": {"commit": baseline.commit, "variant": baseline.variant,
                                 "fallback": baseline.note, "build_s": baseline.build_s}}
    app.say("benchmarking the baseline")
    config = target.config_of(baseline.variant)
    base = target.bench(baseline.commit, model=model_path, options=options, config=config)
    report["baseline"]["bench"] = to_dict(base)
    cand = None
    if patch is not None:
        commit = target.commit_patch(patch.read_text(), base=baseline.commit, message=f"patch {patch.name}")
        app.say("building the patched tree")
        build = target.build(commit, baseline.variant)
        report["candidate"] = {"commit": commit, "build": to_dict(build)}
        if build.ok:
            checks = target.checks(commit, baseline.variant, baseline=baseline)
            report["candidate"]["checks"] = to_dict(checks)
            if checks.ok:
                app.say("benchmarking the patched tree")
                cand = target.bench(commit, model=model_path, options=options, config=config)
                report["candidate"]["bench"] = to_dict(cand)
    if as_json:
        app.emit_json(report)
        return
    _print_bench(app, base, cand, report)


def _print_bench(app: AppContext, base: BenchResult, cand: BenchResult | None, report: dict) -> None:
    pinned = f" on CPUs {base.cpus}" if base.cpus else ""
    table = Table(title=f"llama-bench · {base.model} · {base.cpu} · {base.threads} threads{pinned} · "
                        f"fa {'on' if base.flash_attn else 'off'}")
    table.add_column("test")
    table.add_column("baseline t/s", justify="right")
    if cand is not None:
        table.add_column("patched t/s", justify="right")
        table.add_column("change", justify="right")
    for s in base.samples:
        row = [s.test, f"{s.mean_ts:.2f} ± {s.stddev_ts:.2f}"]
        c = cand.get(s.test) if cand is not None else None
        if c is not None:
            row += [f"{c.mean_ts:.2f} ± {c.stddev_ts:.2f}", f"{(c.mean_ts / s.mean_ts - 1) * 100:+.1f}%"]
        table.add_row(*row)
    app.console.print(table)
    app.console.print(f"build config: {base.config.note}; samples per test: {len(base.samples[0].samples_ts)}"
                      if base.samples else "no samples")
    cand_report = report.get("candidate")
    if cand_report:
        b = cand_report["build"]
        if not b["ok"]:
            app.console.print(f"[red]patched build failed at {b['stage']}[/red]:\n{b['log_tail'][-1500:]}")
        else:
            for check in cand_report["checks"]["results"]:
                figures = check.get("evidence") or {}
                kld = (f" (KLD mean {figures['mean_kld']:.2e} max {figures['max_kld']:.2e} p99.9 "
                       f"{figures['p999_kld']:.2e}, same top p {figures['same_top_p']:.2f}%)"
                       if "mean_kld" in figures else "")
                app.console.print(f"{check['name']}: {'pass' if check['passed'] else 'FAIL: ' + check['reason']}{kld}")


@model_app.command("synth")
def synth_cmd(ctx: typer.Context,
              quant: str = typer.Option("Q4_0", "--quant", callback=_check_quant, help="Quantization type."),
              source: str = typer.Option("llama.cpp", "--source", help="Source whose gguf-py, vocab and "
                                                                      "llama-quantize are used."),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """Write the synthetic TinyLlama-1.1B-shaped GGUF (random weights), cached by its parameters."""
    app = app_context(ctx)
    _, target = compose_target(app.paths, make_spec("llama.cpp", source=source, options={"quant": quant}),
                               say=app.say)
    app.say("building the baseline (its llama-quantize makes the model)")
    commit = target.source.baseline
    build = target.build(commit)
    if not build.ok:
        raise ReadfirstError(f"the baseline did not build ({build.stage}): {build.log_tail[-800:]}")
    path = target.make_model(commit)
    info = validate_gguf(path)
    if as_json:
        app.emit_json({"path": str(path), **info})
    else:
        app.console.print(f"{path}  ({info['bytes'] / 2**20:.1f} MiB, {info['tensors']} tensors)")


@model_app.command("check")
def check_cmd(ctx: typer.Context, path: Path = typer.Argument(..., help="A GGUF file."),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """Validate a GGUF model file (magic, header, tensor table, size)."""
    app = app_context(ctx)
    info = validate_gguf(path)
    app.emit_json(info) if as_json else app.console.print(
        f"{path}: {info['architecture']}, {info['tensors']} tensors, {info['bytes'] / 2**20:.1f} MiB")


@model_app.command("serve")
def serve_cmd(ctx: typer.Context, path: Path = typer.Argument(..., help="A GGUF file: the model to serve."),
              port: int = typer.Option(8080, "--port", min=1, max=65535, help="Port on 127.0.0.1."),
              context: int = typer.Option(32768, "--ctx", min=512, help="Context tokens (one slot has them all)."),
              threads: int = typer.Option(2, "-t", "--threads", min=1, help="Threads the server computes with."),
              source: str = typer.Option("llama.cpp", "--source", help="The llama.cpp source to build it from.")
              ) -> None:
    """Serve a local GGUF through llama.cpp's llama-server (Anthropic Messages API) for LLM mode.

    Builds llama-server once from the pinned source in the sandbox, starts it on 127.0.0.1 and prints the two
    variables that point `readfirst run` at it; Ctrl-C stops it."""
    from ..targets.llama_cpp.baseline import establish_baseline
    from ..targets.llama_cpp.server import build_server, serve
    app = app_context(ctx)
    info = validate_gguf(path)
    _, target = compose_target(app.paths, make_spec("llama.cpp", source=source), say=app.say)
    # the configuration that builds and passes its tests on this CPU (native, or the fallback: AMX can crash)
    verified, _ = establish_baseline(target, model=path, say=app.say)
    bin_dir = build_server(target, verified.config, say=app.say)
    log = app.paths.home / f"llama-server-{port}.log"
    with serve(bin_dir, path, port=port, context=context, threads=threads, log=log, say=app.say) as server:
        app.console.print(f"{info['architecture']} model {path.name} served; in another shell:\n"
                          f"  export ANTHROPIC_BASE_URL={server.url} ANTHROPIC_API_KEY=local\n"
                          f"  readfirst run --llm-model {path.stem} --llm-max-reply 512 ...\n"
                          f"(a request's max_tokens overrides the server's cap: --llm-max-reply bounds the replies; "
                          f"Ctrl-C stops it; log: {server.log})",
                          soft_wrap=True)
        try:
            server.process.wait()
        except KeyboardInterrupt:
            return
    raise ReadfirstError(f"llama-server stopped by itself (exit {server.process.returncode}); log: {server.log}")


def register(app: typer.Typer) -> None:
    app.add_typer(sandbox_app, name="sandbox")
    app.add_typer(model_app, name="model")
