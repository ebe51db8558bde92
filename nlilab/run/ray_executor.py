"""`nlilab run --executor ray`: each pending experiment as a Ray task, on one machine or a cluster.

Only where an experiment runs changes. The runner's preflight, the cache keys, `execute.run_experiment` (stale
state, failure records, the cache key written last), the log files and the report are the local executor's; a
task is `workers.run_logged`, what a local worker process runs.

Storage: the task writes the experiment's files itself, so every node must see the driver's results, reports and
notebooks folders at the same paths (a shared file system, as the checkout usually is on a cluster). Each task
checks that first, against a marker file the driver writes for this run, and fails with a message saying so
rather than writing results to a node's own disk where the driver would never see them. (Shipping the files
back through Ray instead would also need the notebooks, the source and the data shipped out; not done.)

Resources: Ray places each task where its declared needs fit and runs as many at once as the cluster has room
for. A GPU experiment asks for one GPU and its share of the CPUs and memory of the GPU nodes (CPUs / GPUs of the
smallest such node), so that every GPU of a node can be busy at once; a CPU experiment for one CPU and
workers.GB_PER_JOB of memory, as the local executor plans it.
"""

from __future__ import annotations

import os
import platform
import sys
import time
import uuid
from pathlib import Path

from nlilab.errors import NlilabError
from nlilab.results import SCHEDULE, atomic_write_json
from nlilab.run.cache import cache_key
from nlilab.run.execute import Outcome
from nlilab.run.workers import (
    GB_PER_JOB,
    _expected_seconds,
    log_path,
    record_failure,
    resolve_jobs,
    run_logged,
)
from nlilab.training.costs import schedules

INSTALL = "pip install -e .[ray]"
MARKER = ".nlilab-ray-driver-"  # + a token per run: a node that sees this file sees the driver's folder


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise NlilabError(f"--executor ray needs Ray, an optional extra of nlilab: run `{INSTALL}` in the "
                          f"checkout (or `make test`, which installs it) ({exc})") from None
    return ray


# ------------------------------------------------------------------------------------------------ resources
def _nodes(ray) -> list[dict]:
    """The total resources of each live node: {"CPU": 16.0, "GPU": 8.0, "memory": bytes, ...}."""
    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def needs_gpu(config: dict, cluster_has_gpu: bool) -> bool:
    """Whether the experiment asks Ray for a GPU: device cuda, or auto where the cluster has GPUs (what 'auto'
    means on one machine, trainer.resolve_device, said of the cluster). The data experiment never uses one."""
    if config["kind"] == "data":
        return False
    device = config.get("device", "auto")
    return device == "cuda" or (device == "auto" and cluster_has_gpu)


def task_resources(config: dict, nodes: list[dict]) -> dict:
    """What the experiment's task declares to Ray: num_gpus, num_cpus, memory (bytes)."""
    gpu_nodes = [n for n in nodes if n.get("GPU", 0) >= 1]
    if needs_gpu(config, bool(gpu_nodes)):
        if not gpu_nodes:  # refused by check_feasible, before anything runs
            return {"num_gpus": 1, "num_cpus": 1, "memory": 0}
        # a GPU's share of its node: the smallest share, so that it fits on every GPU node
        return {"num_gpus": 1,
                "num_cpus": max(1, int(min(n.get("CPU", 0) / n["GPU"] for n in gpu_nodes))),
                "memory": int(min(n.get("memory", 0) / n["GPU"] for n in gpu_nodes))}
    # like the local executor's plan, which still runs one experiment where memory is short of GB_PER_JOB
    largest = max((n.get("memory", 0) for n in nodes), default=0)
    return {"num_gpus": 0, "num_cpus": 1, "memory": int(min(GB_PER_JOB * 2**30, largest))}


def check_feasible(demands: dict[str, dict], nodes: list[dict], where: str) -> None:
    """Ray waits for ever for a task that no node can hold (a cluster might grow); before anything runs, say
    which experiments cannot be placed on the cluster as it is, as the preflight does for one machine."""
    resource = {"num_gpus": "GPU", "num_cpus": "CPU", "memory": "memory"}
    problems = {}
    for name, demand in demands.items():
        if not any(all(node.get(resource[k], 0) >= v for k, v in demand.items()) for node in nodes):
            need = f"{demand['num_gpus']} GPU, {demand['num_cpus']} CPU, {demand['memory'] / 2**30:.1f} GiB"
            problems.setdefault(need, []).append(name)
    if problems:
        offered = "; ".join(f"{n.get('GPU', 0):g} GPU, {n.get('CPU', 0):g} CPU, {n.get('memory', 0) / 2**30:.1f} GiB"
                            for n in nodes) or "no live node"
        lines = [f"  experiments {', '.join(names)} need {need}" for need, names in problems.items()]
        raise NlilabError(f"nothing was run: no node of the Ray cluster ({where}) can hold these experiments "
                          f"(its nodes: {offered}):\n" + "\n".join(lines))


# ------------------------------------------------------------------------------------------------ the task
def _folders(config: dict) -> list[Path]:
    """The folders of the run that a task writes into: results/<profile> and reports/<profile>."""
    return [Path(config["output_dir"]).parent, Path(config["reports_dir"]) / config["profile"]]


def _check_shared(config: dict, marker: str) -> None:
    for folder in _folders(config):
        if not (folder / marker).is_file():
            raise NlilabError(f"node {platform.node()} does not see the driver's folder {folder}: with "
                              "--executor ray, the results, reports and notebooks folders must be on storage "
                              "that every node mounts at the same path")


def _task(config: dict, force: bool, key: dict, threads: int, device: str | None, marker: str) -> dict:
    """One experiment, on whichever node Ray chose. For a GPU task Ray has already set CUDA_VISIBLE_DEVICES to
    the GPU it reserved; a CPU task gets "" (device), so that its kernel does not take a GPU it did not ask for."""
    import ray

    began = time.time()
    _check_shared(config, marker)
    outcome = run_logged(config, force, key, threads, device)
    return {"outcome": outcome.__dict__, "began": began, "ended": time.time(), "host": platform.node(),
            "node_id": ray.get_runtime_context().get_node_id()}


def _error_text(exc: BaseException) -> str:
    """What the report shows for a task that failed outside the notebook (run_experiment records the
    notebook's own failures): an NlilabError's message alone, else the last lines of Ray's account."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, NlilabError):
        return f"{type(cause).__name__}: {cause}"
    lines = str(exc).strip().splitlines()[-12:]
    return f"the Ray task running this experiment failed ({type(exc).__name__}):\n" + "\n".join(lines)


# ------------------------------------------------------------------------------------------------ the driver
def _connect(ray, address: str | None) -> bool:
    """Connect to the cluster (Ray's own rules for `address`: None finds a running local instance or starts
    one, "auto" only finds one); True when this call did so, and the run should disconnect at its end."""
    if ray.is_initialized():  # a caller (a notebook, a test) already chose the cluster
        return False
    try:
        ray.init(address=address)
    except ConnectionError as exc:
        raise NlilabError(f"no Ray cluster at {address or 'the default address'}: start one with "
                          f"`ray start --head` (then `ray start --address=<head>:6379` on the other nodes) ({exc})"
                          ) from None
    return True


def _write_schedules(configs: list[dict], done: dict[str, dict], threads: dict[str, int], limit) -> None:
    """Each finished experiment's schedule.json, as the local executor writes it, except that 'ran beside'
    counts only experiments on the same node (those on other machines shared nothing with it), and the node
    is named."""
    by_name = {c["name"]: c for c in configs}
    for node in {d["node_id"] for d in done.values()}:
        here = {n: (d["began"], d["ended"]) for n, d in done.items() if d["node_id"] == node}
        for name, record in schedules(here, limit, None).items():
            record.update(threads=threads[name], executor="ray", node=done[name]["host"])
            atomic_write_json(Path(by_name[name]["output_dir"]) / SCHEDULE, record)


def run_ray(configs: list[dict], pending: list[dict], force: bool, address: str | None = None,
            jobs: int | str = "auto") -> list[Outcome]:
    """The pending experiments as Ray tasks (at most `jobs` at once when it is a number; with 'auto', as many
    as the cluster has room for). Outcomes come back in the profile's order, the fresh ones as skipped."""
    ray = import_ray()
    outcomes = {c["name"]: Outcome(c["name"], "skipped", 0.0) for c in configs}
    fresh = [c["name"] for c in configs if c not in pending]
    if fresh:
        print(f"unchanged since their last run, skipped: {', '.join(fresh)}", flush=True)
    if not pending:
        return list(outcomes.values())
    limit = None if jobs == "auto" else resolve_jobs(jobs, pending)
    # max_calls=1: a fresh worker process per experiment, as locally (papermill changes the working directory;
    # the environment set for one experiment must not reach the next); max_retries=0: an experiment whose
    # worker died is recorded as failed, as locally, and the next run resumes it from its checkpoints.
    task = ray.remote(max_calls=1, max_retries=0)(_task)
    owner = _connect(ray, address)
    marker = MARKER + uuid.uuid4().hex
    markers = {folder / marker for c in pending for folder in _folders(c)}
    running: dict = {}
    done: dict[str, dict] = {}
    demands: dict[str, dict] = {}
    try:
        nodes = _nodes(ray)
        demands = {c["name"]: task_resources(c, nodes) for c in pending}
        check_feasible(demands, nodes, f"address {address}" if address else "the one Ray found")
        for path in markers:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"written by the nlilab driver on {platform.node()}, pid {os.getpid()}\n")
        total = ray.cluster_resources()
        print(f"running {len(pending)} experiment(s) as Ray tasks on {len(nodes)} node(s) "
              f"({total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU)"
              + (f", at most {limit} at a time" if limit else "")
              + f"; their output: {log_path(pending[0]).parent}/<experiment>.log", flush=True)
        queue = sorted(pending, key=_expected_seconds, reverse=True)  # longest first, as locally
        while queue or running:
            while queue and (limit is None or len(running) < limit):
                config = queue.pop(0)
                need = demands[config["name"]]
                device = None if need["num_gpus"] else ""
                ref = task.options(name=config["name"], **need).remote(
                    config, force, cache_key(config), need["num_cpus"], device, marker)
                running[ref] = (config, time.perf_counter())
                print(f"submitted {config['name']} ({config['notebook']}): {need['num_gpus']} GPU, "
                      f"{need['num_cpus']} CPU, {need['memory'] / 2**30:.1f} GiB", flush=True)
            # a timeout, so that Ctrl-C is seen while every task still runs
            ready, _ = ray.wait(list(running), num_returns=1, timeout=5)
            for ref in ready:
                config, submitted = running.pop(ref)
                name = config["name"]
                where = ""
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:  # outside the notebook: the task, its worker or node
                    outcomes[name] = outcome = record_failure(config, _error_text(exc),
                                                              time.perf_counter() - submitted)
                else:
                    outcomes[name] = outcome = Outcome(**result["outcome"])
                    where = f" on {result['host']}"
                    if outcome.status != "skipped":
                        done[name] = result
                print(f"{name}: {outcome.status} in {outcome.seconds:.1f} s{where}", flush=True)
                if outcome.error:
                    print(outcome.error, file=sys.stderr, flush=True)
    finally:
        for ref in running:  # interrupted: stop what still runs, keep what finished
            ray.cancel(ref, force=True)
        _write_schedules(configs, done, {n: demands[n]["num_cpus"] for n in done}, limit)
        for path in markers:
            path.unlink(missing_ok=True)
        if owner:
            ray.shutdown()
    return [outcomes[c["name"]] for c in configs]
