"""Experiments on a Ray cluster: one experiment per node at a time, each node measuring on its own Docker.

The driver keeps the graph, the ledger, the checkpoints and the knowledge base; a node gets plain records (the
hypothesis, the current best and the baseline as dicts, the run's noise and run cap) and sends back the ledger
row. Each node composes its own target from the run's target spec (graph.deps.compose_target, its local Docker
engine and data directory), so a node runs the same sandbox with the same guarantees as a local run.

Why one actor per node, with max_concurrency=1 and pinned to its node (NodeAffinitySchedulingStrategy, hard):
an experiment builds, checks and then benchmarks; a second experiment on the same node would build beside the
first one's benchmark (on a 2-core machine that read as an 8% A/A bias). One actor that runs one call at a
time is that rule, and the driver hands each actor one experiment at a time, so a wave of K experiments lands
on K different nodes when K nodes are free and waits for a free node otherwise. Nodes that share one machine
also share its machine lock (sandbox/machine_lock.py) when they share its cache, as on a laptop cluster.

A node that dies mid-experiment (its raylet or machine gone: ActorDiedError, NodeDiedError, WorkerCrashedError)
loses that experiment only: it is run again on another live node, from the start; the row records the nodes
lost on the way. Rows are recorded by the driver's ledger alone, once, so nothing is counted twice.

Commits travel as git bundles when a node does not share the driver's repository: the driver sends the commits
from the baseline to the current best with an experiment, and the node sends back its candidate's commit.

Each node's own noise: before its first experiment a node measures the current best against itself (an A/A
calibration on its own machine, as the run did on the driver's), and its verdicts pool that noise rather than the
driver's. A node noisier than the run's floor (by default twice the driver's pair SD, or a limit the run sets) is
reported and not used for verdicts: a verdict is only as good as the quietest machine it could have had.

Machine classes: nodes carry a Ray custom resource naming their class (deploy/ tags them, e.g. x86-avx512). A
run may name several classes; then every experiment is measured on one node of each, at once, and kept only when
every class keeps it (a patch that wins on one CPU and loses on another is not a win). The row keeps each class's
verdict (`per_class`), so the report states the wins per class.

LLM mode: the implementer runs on the driver (it reads the driver's trees and spends the driver's budget); the
node gets the patch. Repairs of a failed build or check are not offered on a cluster yet.
"""

from __future__ import annotations

import base64
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import ReadfirstError
from ..sources import git

Say = Callable[[str], None]
# (payload, the node's target made on first use, say) -> the ledger row
NodeExperiment = Callable[[dict[str, Any], Callable[[], Any], Say], dict[str, Any]]
# (payload, target, say) -> {"noise": {test: {"pair_sd", "df"}}, "text": in words, "seconds": spent}
NodeCalibration = Callable[[dict[str, Any], Callable[[], Any], Say], dict[str, Any]]
ADDRESS_ENV = "READFIRST_RAY_ADDRESS"
MAX_ATTEMPTS = 3          # an experiment lost with this many nodes stops the run: something else is wrong
NO_NODE_WAIT_S = 600.0    # how long a wave waits for a node when the cluster has none free or none at all
NOISE_FACTOR = 2.0        # a node whose A/A pair SD exceeds this many times the run's own is not used for verdicts


class NoNodes(ReadfirstError):
    """The cluster has no node that can run an experiment (none alive with a CPU, or none left after losses)."""


def _lost_errors() -> tuple[type[BaseException], ...]:
    """The errors that say a node (or the worker process of its actor) died, not that the experiment failed."""
    from ray import exceptions as rex
    return (rex.RayActorError, rex.NodeDiedError, rex.WorkerCrashedError, rex.LocalRayletDiedError)


# -- commits between repositories ----------------------------------------------------------------------------------

def has_commit(repo: Path, commit: str) -> bool:
    return git(repo, "cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode == 0


def pack_commits(repo: Path, base: str, tip: str) -> str | None:
    """The commits from `base` (exclusive) to `tip` as a git bundle, base64 (a plain string travels anywhere);
    None when there is nothing between them."""
    if tip == base:
        return None
    ref = f"refs/readfirst/transfer/{tip}"  # a bundle needs a ref to name its tip
    git(repo, "update-ref", ref, tip)
    try:
        with tempfile.TemporaryDirectory(prefix="readfirst-bundle-") as tmp:
            path = Path(tmp) / "commits.bundle"
            git(repo, "bundle", "create", "-q", str(path), f"{base}..{ref}")
            return base64.b64encode(path.read_bytes()).decode()
    finally:
        git(repo, "update-ref", "-d", ref, check=False)


def unpack_commits(repo: Path, bundle: str | None, tip: str) -> None:
    """Store a bundle's commits in `repo` (unless it has `tip` already), and keep `tip` reachable."""
    if bundle is None or has_commit(repo, tip):
        return
    with tempfile.TemporaryDirectory(prefix="readfirst-bundle-") as tmp:
        path = Path(tmp) / "commits.bundle"
        path.write_bytes(base64.b64decode(bundle))
        proc = git(repo, "bundle", "unbundle", str(path), check=False)
        if proc.returncode != 0:
            raise ReadfirstError(f"the commits sent with an experiment do not fit {repo}: "
                                 f"{proc.stderr.strip()[-300:]}")
    git(repo, "update-ref", f"refs/readfirst/received/{tip}", tip)


# -- the node's side ------------------------------------------------------------------------------------------------

def node_info() -> dict[str, Any]:
    """Which machine this is: what every row measured here records."""
    from .workers import cpu_model
    info: dict[str, Any] = {"hostname": socket.gethostname(), "cpu": cpu_model(), "pid": os.getpid()}
    try:
        import ray
        info["ray_node_id"] = ray.get_runtime_context().get_node_id()
    except Exception:  # outside Ray (a test calling the node's code directly)
        info["ray_node_id"] = None
    return info


class _TimedTarget:
    """The node's target, recording the span of each benchmark call (wall clock; a wait for the machine lock
    included): the row shows when its node was measuring."""

    def __init__(self, target, windows: list[list[float]]):
        self._target = target
        self._windows = windows

    def measure(self, *args, **kwargs):
        began = time.time()
        try:
            return self._target.measure(*args, **kwargs)
        finally:
            self._windows.append([began, time.time()])

    def __getattr__(self, name: str):
        return getattr(self._target, name)


def _best_ready(payload: dict[str, Any], target) -> None:
    """The current best built on this node, its commits received first (a node new to the run has built nothing;
    a built one is reused), after removing what an earlier actor on this node left when it died."""
    sandbox = getattr(target, "sandbox", None)
    if sandbox is not None and hasattr(sandbox, "gc"):
        sandbox.gc()
    best = payload["best"]
    repository = getattr(target, "repository", None)
    if repository is not None:
        unpack_commits(Path(repository), payload.get("commits"), best["commit"])
    built = target.build(best["commit"], best["variant"], worker=int(payload.get("worker", 0)))
    if not built.ok:
        raise ReadfirstError(f"the current best ({best['commit'][:10]}) does not build on {socket.gethostname()}: "
                             f"{built.stage}")


def target_calibration(payload: dict[str, Any], target_of: Callable[[], Any], say: Say) -> dict[str, Any]:
    """What a node does before its first experiment: the current best against itself on this machine, the run's
    A/A schedule (agents.evaluator.calibrate) with `calibration_pairs` pairs."""
    from ..agents.experiment import calibrate_build
    target = target_of()
    _best_ready(payload, target)
    best = payload["best"]
    pairs = int(payload["calibration_pairs"])
    say(f"node calibration: the current best against itself, {pairs} pairs")
    cal = calibrate_build(target, best["commit"], best["variant"], pairs=pairs,
                          max_runs=int(payload.get("max_runs", 62)))
    return {"noise": {test: asdict(prior) for test, prior in cal.priors().items()}, "text": cal.describe(),
            "seconds": cal.time_spent_s}


def target_experiment(payload: dict[str, Any], target_of: Callable[[], Any], say: Say) -> dict[str, Any]:
    """What a node does with an experiment: the work of agents.experiment.run_experiment on its own target."""
    from ..agents.experiment import evaluator_for, run_experiment
    from ..records import Baseline, from_dict
    target = target_of()
    _best_ready(payload, target)
    best, worker = payload["best"], int(payload.get("worker", 0))
    repository = getattr(target, "repository", None)
    windows: list[list[float]] = []
    row = run_experiment(payload["hypothesis"], target=_TimedTarget(target, windows), best=best,
                         baseline=from_dict(Baseline, payload["baseline"]), worker=worker,
                         evaluator_config=evaluator_for(target, max_runs=int(payload.get("max_runs", 62)),
                                                        noise=payload.get("noise") or {}),
                         say=say)
    row["bench_windows"] = windows
    candidate = (row.get("candidate") or {}).get("commit")
    if repository is not None and candidate and candidate != best["commit"]:
        row["_commits"] = pack_commits(Path(repository), best["commit"], candidate)
    return row


class ExperimentNode:
    """The actor on one node (made by RayExecutor with max_concurrency=1, pinned to its node)."""

    def __init__(self, spec: dict[str, Any], home: str | None = None, cache: str | None = None,
                 experiment: NodeExperiment | None = None, driver_host: str | None = None,
                 calibration: NodeCalibration | None = None):
        self.spec = spec
        # The driver's data directories serve a node on the driver's machine (one cache: one machine lock, one
        # build per commit); a node elsewhere uses its own (READFIRST_HOME there, or its user's default).
        here = driver_host is None or driver_host == socket.gethostname()
        self.home, self.cache = (home, cache) if here else (None, None)
        self.experiment = experiment or target_experiment
        self.calibration = calibration or target_calibration
        self._target = None
        self._said: list[str] = []  # the running experiment's lines (the target keeps the say it was made with)
        self.info = node_info()

    def describe(self) -> dict[str, Any]:
        return dict(self.info)

    def _say(self, line: str) -> None:
        self._said.append(line)

    def _target_of(self):
        if self._target is None:
            from ..config import Paths
            from ..graph.deps import compose_target
            paths = Paths.resolve(self.home, self.cache)
            _sandbox, self._target = compose_target(paths, self.spec, say=self._say)
        return self._target

    def calibrate(self, payload: dict[str, Any]) -> dict[str, Any]:
        self._said = said = []
        return {"calibration": self.calibration(payload, self._target_of, self._say), "said": said}

    def run(self, payload: dict[str, Any]) -> dict[str, Any]:
        self._said = said = []
        started = time.time()
        row = self.experiment(payload, self._target_of, self._say)
        commits = row.pop("_commits", None)
        return {"row": row, "said": said, "commits": commits,
                "node": {**self.info, "started_at": started, "finished_at": time.time()}}


# -- the driver's side ----------------------------------------------------------------------------------------------

def noise_excess(node: Mapping[str, Mapping[str, Any]], run: Mapping[str, Mapping[str, Any]], *,
                 limit: float | None = None, factor: float = NOISE_FACTOR) -> str | None:
    """Why a node's A/A noise rules it out of verdicts, in words, or None. Per test: its pair SD against
    `limit` (a pair SD the run set) or else `factor` times the run's own; a test the run never calibrated (and no
    limit) is not judged."""
    for test, mine in sorted(node.items()):
        if limit is not None:
            cap, against = limit, "the run's limit"
        elif test in run and run[test].get("pair_sd"):
            cap, against = factor * float(run[test]["pair_sd"]), f"{factor:g} x the run's {run[test]['pair_sd']:.1%}"
        else:
            continue
        if float(mine["pair_sd"]) > cap:
            return f"{test}: A/A pair SD {mine['pair_sd']:.1%} > {against} ({cap:.1%})"
    return None


def class_result(row: Mapping[str, Any]) -> dict[str, Any]:
    """What one class's measurement of an experiment said: its verdict's gist and the node that measured it."""
    node = row.get("node") or {}
    return {"decision": row.get("decision"), "reason": row.get("reason", ""), "speedup": row.get("speedup"),
            "ci_low": row.get("ci_low"), "ci_high": row.get("ci_high"),
            "gate": (row.get("verdict") or {}).get("gate"), "runs": len((row.get("verdict") or {}).get("runs") or []),
            "node": {k: node.get(k) for k in ("hostname", "cpu", "ray_node_id", "class")}}


def merge_classes(rows: Mapping[str, dict[str, Any]], classes: Sequence[str]) -> dict[str, Any]:
    """One ledger row from an experiment measured on a node of each class: the first class's row (its candidate
    commit is the one the run goes on from) with every class's verdict in `per_class`; kept only when every class
    kept it, else discarded with the first class that did not and why."""
    first = rows[classes[0]]
    merged = {**first, "per_class": {c: class_result(rows[c]) for c in classes}}
    refused = [c for c in classes if rows[c].get("decision") != "keep"]
    if refused and first.get("decision") == "keep":
        c = refused[0]
        kept_on = ", ".join(k for k in classes if k not in refused)
        merged["decision"] = "discard"
        merged["reason"] = f"kept on {kept_on} but not on {c}: {rows[c].get('reason', '')}"
        merged["verdict"] = {**(first.get("verdict") or {}), "decision": "discard", "reason": merged["reason"]}
    elif refused:
        merged["reason"] = f"on {classes[0]}: {first.get('reason', '')}"
    return merged


class RayExecutor:
    """Runs experiments on a Ray cluster, one per node at a time; callable like RunDeps.execute.

    `address`: what ray.init takes ("auto" for the cluster this machine belongs to, or host:port). `spec`: the
    run's target spec. `home`/`cache`: the data directories of nodes on the driver's machine (None, and for
    nodes elsewhere: each node's own default).
    `target`: the driver's target (its repository sends and receives commits; an LLM experiment that ends
    before its build is recorded with it), or None when the nodes share the repository.
    `classes`: the machine classes (Ray custom resources) to measure on; none: any node, one per experiment;
    one: only nodes carrying it; several: every experiment on a node of each (see merge_classes).
    `calibration_pairs`: each node's own A/A calibration before its first experiment (0: none; the verdicts then
    pool the run's noise); `noise_limit`: the pair SD (log ratio) above which a node is not used, default
    NOISE_FACTOR times the run's. `experiment`/`calibration`: what a node runs (default: target_experiment,
    target_calibration)."""

    def __init__(self, address: str, spec: dict[str, Any], *, home: str | None = None, cache: str | None = None,
                 target: Any = None, classes: Sequence[str] = (), calibration_pairs: int = 0,
                 noise_limit: float | None = None, experiment: NodeExperiment | None = None,
                 calibration: NodeCalibration | None = None, say: Say = lambda _: None,
                 no_node_wait_s: float = NO_NODE_WAIT_S, token_file: str | None = None):
        from .ray_auth import prepare_client
        try:
            import ray
        except ImportError as e:
            raise ReadfirstError("--ray needs Ray on this machine and on every node: pip install 'ray==2.60.0'") from e
        self._ray = ray
        if not ray.is_initialized():
            prepare_client(address, token_file)  # the cluster's token: see ray_auth
            try:
                # the nodes' output stays in their logs: the driver prints what each row's node said, once
                ray.init(address=address, log_to_driver=False, logging_level="WARNING")
            except (ConnectionError, RuntimeError, ValueError, ray.exceptions.AuthenticationError) as e:
                raise ReadfirstError(f"cannot join the Ray cluster at {address!r}: {str(e).splitlines()[0][:300]}"
                                     ) from e
            self._owns_ray = True
        else:
            self._owns_ray = False
        self.address = address
        self.spec = dict(spec)
        self.home, self.cache = home, cache
        self.target = target
        self.repository = Path(target.repository) if target is not None else None
        self.classes = tuple(dict.fromkeys(classes))
        self.calibration_pairs = calibration_pairs
        self.noise_limit = noise_limit
        self.experiment = experiment
        self.calibration = calibration
        self.say = say
        self.no_node_wait_s = no_node_wait_s
        self._cond = threading.Condition()
        self._actors: dict[str, Any] = {}   # node id -> its actor
        self._resources: dict[str, dict[str, float]] = {}  # node id -> its Ray resources
        self._busy: set[str] = set()
        self._lost: set[str] = set()        # a node that comes back gets a new id, so a lost id stays lost
        self._noisy: dict[str, str] = {}    # node id -> why its noise rules it out
        self._calibrated: dict[str, dict[str, Any]] = {}  # node id -> its calibration and its machine
        self._actor_class = ray.remote(ExperimentNode)

    # nodes ---------------------------------------------------------------------------------------------------------
    def _usable(self, node: Mapping[str, Any]) -> bool:
        resources = node.get("Resources") or {}
        return (bool(node.get("Alive")) and resources.get("CPU", 0) >= 1 and node["NodeID"] not in self._lost
                and node["NodeID"] not in self._noisy
                and (not self.classes or any(resources.get(c, 0) > 0 for c in self.classes)))

    def _refresh(self) -> None:
        """An actor for every usable node that has none; actors of nodes gone are dropped. (Under the lock.)"""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        alive = {n["NodeID"]: n.get("Resources") or {} for n in self._ray.nodes() if self._usable(n)}
        for node_id in list(self._actors):
            if node_id not in alive and node_id not in self._busy:
                del self._actors[node_id]
        self._resources.update(alive)
        for node_id in sorted(set(alive) - set(self._actors)):
            self._actors[node_id] = self._actor_class.options(
                num_cpus=1, max_concurrency=1, max_restarts=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            ).remote(self.spec, self.home, self.cache, self.experiment, socket.gethostname(), self.calibration)

    def _of_class(self, node_id: str, machine_class: str | None) -> bool:
        return machine_class is None or self._resources.get(node_id, {}).get(machine_class, 0) > 0

    def _acquire(self, machine_class: str | None = None) -> tuple[str, Any]:
        deadline = time.monotonic() + self.no_node_wait_s
        with self._cond:
            while True:
                self._refresh()
                mine = [n for n in self._actors if self._of_class(n, machine_class)]
                free = [n for n in mine if n not in self._busy]
                if free:
                    node_id = free[0]
                    self._busy.add(node_id)
                    return node_id, self._actors[node_id]
                wanted = f" of the class {machine_class!r}" if machine_class else ""
                if not mine and self._noisy and self._all_noisy(machine_class):
                    raise NoNodes(f"every node{wanted} of {self.address} is noisier than the run allows ("
                                  + "; ".join(f"{n[:12]}: {why}" for n, why in sorted(self._noisy.items()))
                                  + "); give the run a quieter machine, or a higher --node-noise-max")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NoNodes(f"no Ray node{wanted} of {self.address} could take an experiment for "
                                  f"{self.no_node_wait_s:g} s" + (f" (only nodes with the resources "
                                                                  f"{', '.join(self.classes)} are used)"
                                                                  if self.classes else ""))
                self._cond.wait(timeout=min(left, 2.0))  # a node may join: look again every 2 s

    def _all_noisy(self, machine_class: str | None) -> bool:
        """Every live node of the class was ruled out by its noise (so waiting for one cannot help)."""
        live = [n for n in self._ray.nodes() if n.get("Alive") and n["NodeID"] not in self._lost
                and (n.get("Resources") or {}).get("CPU", 0) >= 1
                and (machine_class is None or (n.get("Resources") or {}).get(machine_class, 0) > 0)]
        return bool(live) and all(n["NodeID"] in self._noisy for n in live)

    def _release(self, node_id: str, *, lost: bool = False, noisy: str | None = None) -> None:
        with self._cond:
            self._busy.discard(node_id)
            if lost or noisy:
                if lost:
                    self._lost.add(node_id)
                else:
                    self._noisy[node_id] = noisy  # type: ignore[assignment]
                actor = self._actors.pop(node_id, None)
                if actor is not None:
                    try:
                        self._ray.kill(actor)
                    except Exception:
                        pass  # its node is gone already
            self._cond.notify_all()

    def nodes(self) -> list[str]:
        """The node ids that have an actor now."""
        with self._cond:
            self._refresh()
            return sorted(self._actors)

    def node_report(self) -> list[dict[str, Any]]:
        """Every node calibrated so far: its machine, class, noise in words and whether it measures verdicts."""
        with self._cond:
            return [{**info, "ray_node_id": node_id, "used": node_id not in self._noisy,
                     "excluded": self._noisy.get(node_id)} for node_id, info in sorted(self._calibrated.items())]

    def _class_of(self, node_id: str) -> str | None:
        carried = self._resources.get(node_id, {})
        return next((c for c in self.classes if carried.get(c, 0) > 0), None)

    # experiments -----------------------------------------------------------------------------------------------------
    def __call__(self, hypothesis: dict[str, Any], *, best: dict[str, Any], baseline: dict[str, Any],
                 worker: int = 0, max_runs: int = 62, noise: Mapping[str, Any] | None = None,
                 implement: Callable | None = None, say: Say | None = None) -> dict[str, Any]:
        say = say or self.say
        llm_info = None
        if hypothesis.get("kind") == "llm" and implement is not None:
            implemented = self._implement(hypothesis, best, baseline, implement, say)
            if isinstance(implemented, dict) and "decision" in implemented:
                return implemented  # not implemented (budget, no patch): a discarded row, as run_experiment makes
            hypothesis, llm_info = implemented
        payload = {"hypothesis": hypothesis, "best": dict(best), "baseline": dict(baseline), "worker": worker,
                   "max_runs": max_runs, "noise": dict(noise or {}), "commits": None}
        if self.repository is not None and baseline.get("commit") and has_commit(self.repository, best["commit"]):
            payload["commits"] = pack_commits(self.repository, baseline["commit"], best["commit"])
        if len(self.classes) <= 1:
            row = self._run_on(self.classes[0] if self.classes else None, payload, say)
        else:  # a node of each class at once; the row is kept only where every class keeps it
            rows: dict[str, dict[str, Any] | BaseException] = {}

            def on(machine_class: str) -> None:
                try:
                    rows[machine_class] = self._run_on(machine_class, payload, say)
                except BaseException as e:  # noqa: BLE001 - raised below, on the caller's thread
                    rows[machine_class] = e

            threads = [threading.Thread(target=on, args=(c,), daemon=True) for c in self.classes]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            failed = next((r for r in rows.values() if isinstance(r, BaseException)), None)
            if failed is not None:
                raise failed
            row = merge_classes(rows, self.classes)  # type: ignore[arg-type]
        if llm_info is not None:
            row["llm"] = llm_info
        return row

    def _calibrate(self, node_id: str, actor, payload: dict[str, Any], say: Say) -> str | None:
        """The node's own A/A calibration, once; why it is too noisy to use, or None. (A lost node raises.)"""
        result = self._ray.get(actor.calibrate.remote({**payload, "calibration_pairs": self.calibration_pairs}))
        cal = result["calibration"]
        info = self._ray.get(actor.describe.remote())
        excess = noise_excess(cal.get("noise") or {}, payload.get("noise") or {}, limit=self.noise_limit)
        with self._cond:
            self._calibrated[node_id] = {"hostname": info.get("hostname"), "cpu": info.get("cpu"),
                                         "class": self._class_of(node_id), "noise": cal.get("noise") or {},
                                         "text": cal.get("text", ""), "seconds": cal.get("seconds")}
        host = info.get("hostname", "?")
        for line in result["said"]:
            say(f"[{host}] {line}")
        say(f"node {node_id[:12]} ({host}) noise: {cal.get('text') or 'not measured'}"
            + (f"; not used for verdicts: {excess}" if excess else ""))
        return excess

    def _run_on(self, machine_class: str | None, payload: dict[str, Any], say: Say) -> dict[str, Any]:
        """The experiment on one free node (of the class), run again elsewhere when its node is lost; with node
        calibration, a node's first call calibrates it and its verdicts pool its own noise."""
        hypothesis = payload["hypothesis"]
        lost: list[dict[str, Any]] = []
        while True:
            node_id, actor = self._acquire(machine_class)
            try:
                if self.calibration_pairs > 0 and node_id not in self._calibrated:
                    excess = self._calibrate(node_id, actor, payload, say)
                    if excess:
                        self._release(node_id, noisy=excess)
                        continue
                mine = dict(payload)
                if node_id in self._calibrated and self._calibrated[node_id]["noise"]:
                    mine["noise"] = self._calibrated[node_id]["noise"]  # this machine's noise, not the driver's
                result = self._ray.get(actor.run.remote(mine))
            except _lost_errors() as e:
                self._release(node_id, lost=True)
                lost.append({"ray_node_id": node_id, "error": type(e).__name__, "at": time.time()})
                say(f"{hypothesis['title']}: its node {node_id[:12]} was lost ({type(e).__name__}); "
                    f"running it again on another node")
                if len(lost) >= MAX_ATTEMPTS:
                    raise NoNodes(f"{hypothesis['title']}: lost with {len(lost)} nodes in a row; the cluster is "
                                  f"failing (last: {str(e).splitlines()[0][:200]})") from e
                continue
            except BaseException:
                self._release(node_id)
                raise
            self._release(node_id)
            break
        row, node = result["row"], result["node"]
        host = node.get("hostname", "?")
        for line in result["said"]:
            say(f"[{host}] {line}")
        candidate = (row.get("candidate") or {}).get("commit")
        if self.repository is not None and candidate:
            unpack_commits(self.repository, result.get("commits"), candidate)
        calibrated = self._calibrated.get(node_id)
        row["node"] = {**node, "lost": lost, "class": self._class_of(node_id),
                       **({"noise": calibrated["noise"], "noise_text": calibrated["text"]} if calibrated else {})}
        return row

    def _implement(self, hypothesis, best, baseline, implement, say):
        """The LLM's patch, made on the driver; or the discarded row when there is none (the budget, no edits)."""
        from ..agents.experiment import run_experiment
        from ..agents.llm import BudgetExceeded
        try:
            patch, info = implement(hypothesis, best["commit"])
            outcome: tuple | BaseException = (patch, info)
        except BudgetExceeded as e:
            patch, info, outcome = None, {}, e
        if patch:
            change = {**(hypothesis.get("change") or {}), "patch": patch}
            return {**hypothesis, "change": change}, info

        def replay(_h, _c):
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        if self.target is None:
            raise ReadfirstError("an LLM experiment on Ray needs the driver's target (RayExecutor(target=...))")
        # run_experiment writes the discarded row (its gate and reason); it stops before any build
        return run_experiment(hypothesis, target=self.target, best=best, baseline=None, implement=replay, say=say)

    def close(self) -> None:
        """Stop the actors; disconnect from the cluster when this executor connected (the cluster stays up)."""
        with self._cond:
            for actor in self._actors.values():
                try:
                    self._ray.kill(actor)
                except Exception:
                    pass
            self._actors.clear()
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()

