"""Command line: `nlilab validate`, `nlilab run`, `nlilab report`.

User errors (NlilabError) print as one message and exit 2, without a traceback wall.
"""

from __future__ import annotations

import argparse
import sys

from nlilab.errors import NlilabError

RAY_INSTALL = "pip install -e .[ray]"  # the same words as nlilab.run.ray_executor.INSTALL, without importing it


def _validate(args) -> int:
    from nlilab.params import load_profile

    prof = load_profile(args.params)
    for warning in prof.warnings:  # allowed, so not a failure; said, because a rerun may not reproduce it
        print(f"nlilab: warning: {prof.path.name}: {warning}", file=sys.stderr)
    print(f"{prof.path}: ok, {len(prof.experiments)} experiment(s): {', '.join(prof.experiments)}")
    return 0


def _run(args) -> int:
    from nlilab.run.runner import run_profile

    if args.address and args.executor != "ray":
        raise NlilabError("--address names a Ray cluster: it goes with --executor ray")

    outcomes = run_profile(args.profile, force=args.force, only=args.only, results_dir=args.results_dir,
                           reports_dir=args.reports_dir, jobs=args.jobs, executor=args.executor,
                           address=args.address, processes=args.processes, machine_rank=args.machine_rank)
    failed = [o.experiment for o in outcomes if o.status == "failed"]
    summary = ", ".join(f"{o.experiment}: {o.status}" for o in outcomes)
    print(f"done: {summary}")
    if failed:
        print(f"nlilab: {len(failed)} experiment(s) failed: {', '.join(failed)} (see the report)", file=sys.stderr)
        return 1
    return 0


def _whole(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {text!r}")
    return value


def _jobs(text: str):
    if text == "auto":
        return text
    try:
        return _whole(text, 1)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number or 'auto', got {text!r}") from None


def _report(args) -> int:
    from nlilab.report.build import build_report

    print(build_report(args.profile, results_dir=args.results_dir, reports_dir=args.reports_dir))
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="nlilab", description="Adapting language models to MultiNLI, reproducibly.")
    sub = top.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="validate a params file and exit")
    v.add_argument("params", help="a profile name (cpu) or a params file path")
    v.set_defaults(func=_validate)
    for name, func, helptext in (("run", _run, "run a profile's notebooks and build its report"),
                                 ("report", _report, "build the report from existing results")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--profile", default="cpu", help="profile name or params file (default: cpu)")
        p.add_argument("--results-dir", help="override the profile's results folder")
        p.add_argument("--reports-dir", help="override the profile's reports folder")
        if name == "run":
            p.add_argument("--force", action="store_true", help="rerun experiments even if unchanged")
            p.add_argument("--only", nargs="+", metavar="EXPERIMENT", help="run only these experiments")
            p.add_argument("--jobs", type=_jobs, default="auto",
                           help="experiments run at once: a number, or 'auto' (default: on a GPU machine one per "
                                "GPU, each experiment on a GPU of its own; else one per core up to 4; with "
                                "--executor ray, as many as the cluster has room for)")
            p.add_argument("--executor", choices=("local", "ray"), default="local",
                           help="where the experiments run: on this machine (default), or as Ray tasks on a "
                                f"Ray cluster (needs `{RAY_INSTALL}`)")
            p.add_argument("--processes", type=lambda text: _whole(text, 1), metavar="N",
                           help="processes that train each encoder or QLoRA experiment together, data-parallel, "
                                "through `accelerate launch` (one per GPU; all machines' together); overrides the "
                                "profile's `processes` (default: the profile's, 1 unless it says otherwise)")
            p.add_argument("--machine-rank", type=lambda text: _whole(text, 0), metavar="R",
                           help="with the profile's launch.num_machines above 1: this machine's place, 0 to "
                                "num_machines - 1 (overrides launch.machine_rank)")
            p.add_argument("--address", help="with --executor ray: the cluster to connect to, as for ray.init "
                                             "('auto': the one started here with `ray start --head`; "
                                             "default: that one if any, else a new local instance)")
        p.set_defaults(func=func)
    return top


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except NlilabError as exc:
        print(f"nlilab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nlilab: interrupted; finished results are kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
