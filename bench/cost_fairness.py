"""Do the encoder methods' throughput figures depend on --jobs? Runs a profile's encoder experiments twice, into
a temporary results folder: once with --jobs 1, once with --jobs 2 (forced both times), and prints each
experiment's timing-window throughput (m["cost"]["window"], measured by nlilab.training.costs.training_window under the
exclusive lock) from both runs, their ratio, and what overlapped each experiment in the parallel run. The goal
(issue 12): every ratio within 15% of 1.

    .venv/bin/python bench/cost_fairness.py [--profile tiny] [--only lora ptuning] [--keep DIR]

Prints a table and writes bench/out/cost_fairness.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nlilab.params import load_profile  # noqa: E402
from nlilab.results import load_results  # noqa: E402
from nlilab.run.runner import run_profile  # noqa: E402

TOLERANCE = 0.15
JOBS = (1, 2)


def window_throughput(metrics: dict | None) -> tuple[float | None, float | None]:
    """(samples/s, samples per CPU second) of the experiment's window, or Nones where it has none."""
    window = ((metrics or {}).get("cost") or {}).get("window") or {}
    return window.get("samples_per_second"), window.get("samples_per_cpu_second")


def run_with_jobs(profile: str, names: list[str], jobs: int, base: Path) -> dict[str, dict]:
    results, reports = base / f"jobs{jobs}" / "results", base / f"jobs{jobs}" / "reports"
    outcomes = run_profile(profile, force=True, only=names, results_dir=results, reports_dir=reports,
                           render=False, jobs=jobs)
    failed = [o.experiment for o in outcomes if o.status == "failed"]
    if failed:
        print(f"--jobs {jobs}: failed: {', '.join(failed)} (logs under {reports})", file=sys.stderr)
    return load_results(results, load_profile(profile).name)


def ratio(a: float | None, b: float | None) -> float | None:
    return b / a if a and b else None


def compare(names: list[str], runs: dict[int, dict[str, dict]]) -> list[dict]:
    rows = []
    for name in names:
        (seq, seq_cpu), (par, par_cpu) = (window_throughput(runs[j].get(name)) for j in JOBS)
        schedule = (runs[JOBS[1]].get(name) or {}).get("schedule") or {}
        r = ratio(seq, par)
        rows.append({"experiment": name, "jobs1_samples_per_s": seq, "jobs2_samples_per_s": par, "ratio": r,
                     "jobs1_samples_per_cpu_s": seq_cpu, "jobs2_samples_per_cpu_s": par_cpu,
                     "cpu_ratio": ratio(seq_cpu, par_cpu),
                     "overlapped_with": schedule.get("overlapped_with"),
                     "within_tolerance": None if r is None else abs(r - 1) <= TOLERANCE})
    return rows


def fmt(value, spec=".1f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict]) -> None:
    print(f"{'experiment':22s} {'jobs1 s/s':>10s} {'jobs2 s/s':>10s} {'ratio':>6s} {'cpu ratio':>9s}  overlapped with")
    for row in rows:
        print(f"{row['experiment']:22s} {fmt(row['jobs1_samples_per_s']):>10s} {fmt(row['jobs2_samples_per_s']):>10s} "
              f"{fmt(row['ratio'], '.2f'):>6s} {fmt(row['cpu_ratio'], '.2f'):>9s}  "
              f"{', '.join(row['overlapped_with'] or []) or '-'}")
    missing = [r["experiment"] for r in rows if r["ratio"] is None]
    if missing:
        print(f"no timing window in metrics.json (m['cost']['window']) for: {', '.join(missing)}")
    outside = [r["experiment"] for r in rows if r["within_tolerance"] is False]
    print(f"outside {TOLERANCE:.0%}: {', '.join(outside) or 'none'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--only", nargs="+", help="encoder experiments to run (default: all of the profile's)")
    parser.add_argument("--keep", help="run into this folder and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)
    prof = load_profile(args.profile)
    names = args.only or [n for n, c in prof.experiments.items() if c["kind"] == "encoder"]
    with tempfile.TemporaryDirectory(prefix="cost_fairness_") as tmp:
        base = Path(args.keep) if args.keep else Path(tmp)
        runs = {jobs: run_with_jobs(args.profile, names, jobs, base) for jobs in JOBS}
    rows = compare(names, runs)
    print_table(rows)
    out = Path(__file__).resolve().parent / "out" / "cost_fairness.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"profile": prof.name, "tolerance": TOLERANCE, "rows": rows}, indent=2),
                   encoding="utf-8")
    print(f"written: {out}")
    return 0 if all(r["within_tolerance"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
