"""Real MultiNLI, parsed and trained on: the folder named by $NLILAB_MNLI_DIR (CI's .ci/run sets it).

Loaded as it is (the hub's schema) and, converted into a temporary folder, in the original 1.0 schema; then one
short LoRA run of MiniLM on a few hundred real pairs, whose metrics.json is checked against the rows it was
given. Rows are copied only into pytest's temporary folders, never into the repository.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from nlilab import LABELS, params
from nlilab.data.nli import ORIGINAL_NAMES, load_nli
from nlilab.experiments import encoder
from nlilab.models import resolve as models

MNLI_DIR = os.environ.get(params.MNLI_DIR_ENV)
pytestmark = pytest.mark.skipif(not MNLI_DIR, reason=f"${params.MNLI_DIR_ENV} is not set, so no real MultiNLI "
                                                     "is at hand (.ci/run sets it where the CI machine has a copy)")
HUB_FILES = {split: f"{split}.jsonl" for split in ORIGINAL_NAMES}


def _rows(split: str, limit: int | None = None) -> list[dict]:
    rows = []
    with open(Path(MNLI_DIR) / HUB_FILES[split], encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                rows.append(json.loads(line))
            if limit and len(rows) == limit:
                break
    return rows


def _local(folder) -> dict:
    return {"source": "local", "local_dir": str(folder), "hub_id": "unused", "revision": None, "train_limit": None,
            "eval_limit": None, "validation_size": 0.1}


def test_hub_schema_folder_loads_as_it_is():
    data = load_nli(_local(MNLI_DIR))
    for split in ("validation_matched", "validation_mismatched"):
        rows = _rows(split)
        assert data.dropped_unlabeled[split] == sum(r["label"] == -1 for r in rows)
        labeled = [r for r in rows if r["label"] != -1]
        assert list(data[split]["pairID"]) == [r["pairID"] for r in labeled]
        assert list(data[split]["label"]) == [r["label"] for r in labeled]
    train = [r for r in _rows("train") if r["label"] != -1]
    held_out = {p: y for p, y in zip(data["validation"]["pairID"], data["validation"]["label"])}
    kept = {p: y for p, y in zip(data["train"]["pairID"], data["train"]["label"])}
    assert held_out.keys().isdisjoint(kept) and {**kept, **held_out} == {r["pairID"]: r["label"] for r in train}


def _write_original(folder: Path, n: int) -> dict[str, list[dict]]:
    """The first n rows of each split in the MultiNLI 1.0 schema: every 9th row unlabeled ('-'), every 7th
    without a pairID. Returns the rows written."""
    folder.mkdir()
    written = {}
    for split, name in ORIGINAL_NAMES.items():
        out = []
        for i, row in enumerate(_rows(split, n)):
            obj = {"sentence1": row["premise"], "sentence2": row["hypothesis"], "genre": row["genre"],
                   "gold_label": "-" if i % 9 == 4 else LABELS[row["label"]]}
            if i % 7 != 3:
                obj["pairID"] = row["pairID"]
            out.append(obj)
        (folder / name).write_text("".join(json.dumps(o) + "\n" for o in out), encoding="utf-8")
        written[split] = out
    return written


def test_original_schema_drops_and_counts_unlabeled_rows(tmp_path):
    written = _write_original(tmp_path / "orig", 300)
    data = load_nli(_local(tmp_path / "orig"))
    again = load_nli(_local(tmp_path / "orig"))
    for split in ("validation_matched", "validation_mismatched"):
        labeled = [o for o in written[split] if o["gold_label"] != "-"]
        assert data.dropped_unlabeled[split] == len(written[split]) - len(labeled) == len(range(4, 300, 9))
        assert list(data[split]["premise"]) == [o["sentence1"] for o in labeled]
        assert list(data[split]["label"]) == [LABELS.index(o["gold_label"]) for o in labeled]
        ids = list(data[split]["pairID"])
        assert [i for i, o in zip(ids, labeled) if "pairID" in o] == [o["pairID"] for o in labeled if "pairID" in o]
        assert all(ids) and len(set(ids)) == len(ids), "rows without a pairID get a distinct id"
        assert ids == list(again[split]["pairID"]), "and the same one each time"
    assert data.dropped_unlabeled["train"] == len(range(4, 300, 9))
    assert len(data["train"]) + len(data["validation"]) == 300 - len(range(4, 300, 9))


PROFILE = """\
description: real MultiNLI, one short LoRA run of MiniLM (test fixture)
shared:
  seed: 0
  device: cpu
  data: {source: local, local_dir: mnli, validation_size: 40}
experiments:
  lora:
    notebook: 12_lora
    model: minilm
    method: lora
    train: {max_steps: 8, batch_size: 16, eval_batch_size: 64, learning_rate: 5.0e-4, max_length: 64,
            logging_steps: 4}
"""


def _f1(matrix: np.ndarray) -> float:
    scores = []
    for k in range(len(matrix)):
        tp, predicted, actual = matrix[k, k], matrix[:, k].sum(), matrix[k].sum()
        scores.append(0.0 if tp == 0 else 2 * tp / (predicted + actual))
    return float(np.mean(scores))


@pytest.mark.slow
def test_lora_run_on_real_pairs_scores_what_it_was_given(tmp_path):
    sizes = {"train": 300, "validation_matched": 150, "validation_mismatched": 150}
    given = {split: _rows(split, n) for split, n in sizes.items()}
    (tmp_path / "mnli").mkdir()
    for split, rows in given.items():
        (tmp_path / "mnli" / HUB_FILES[split]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "real.yaml").write_text(PROFILE)
    prof = params.load_profile(tmp_path / "real.yaml")
    config = params.with_output_dirs(prof, "lora", results_dir=tmp_path / "results", reports_dir=tmp_path / "r")
    encoder.run(config)
    m = json.loads((Path(config["output_dir"]) / "metrics.json").read_text())
    assert m["data_sizes"]["validation"] == 40 and m["data_sizes"]["train"] == 300 - 40
    for split in ("validation_matched", "validation_mismatched"):
        block, label_of = m[split], {r["pairID"]: r["label"] for r in given[split]}
        labels = np.array([label_of[p] for p in block["pair_ids"]])
        assert sorted(block["pair_ids"]) == sorted(label_of) and block["labels"] == labels.tolist()
        (predictions,) = block["predictions_runs"]
        matrix = np.zeros((3, 3), int)
        np.add.at(matrix, (labels, np.array(predictions)), 1)
        assert block["n"] == len(labels) == sizes[split]
        assert block["confusion"] == matrix.tolist()
        assert block["accuracy"] == pytest.approx(float(np.mean(labels == np.array(predictions))), abs=1e-12)
        assert block["macro_f1"] == pytest.approx(_f1(matrix), abs=1e-9)
        assert block["prediction_distribution"] == {name: predictions.count(k) for k, name in enumerate(LABELS)}
        counts = Counter(r["label"] for r in given[split])  # from the file, not from what the run wrote
        assert [sum(row) for row in block["confusion"]] == [counts[k] for k in range(3)]
    assert m["model_provenance"] == models.resolve_model("minilm").provenance  # where its weights came from
