"""MultiNLI splits from one of three sources: the bundled set, a local folder, or the hub.

Every source yields the same three `datasets.Dataset`s (train, validation_matched, validation_mismatched) with
columns premise, hypothesis, label, genre, pairID. Files are parsed line by line so that a malformed row
fails with its file and line; unlabeled rows (label -1) are then dropped with `Dataset.filter` and counted.

The two dev sets are *test* sets: scored once per final model, never used to choose anything. Whatever is chosen
by looking at scores (a swept learning rate, an epoch) is chosen on a fourth split, `validation`, held out from the
labeled training rows (stratified by label, drawn with the experiment's seed, `data.validation_size`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nlilab import LABELS, SPLITS
from nlilab.errors import DataError

MNLI_DIR_ENV = "NLILAB_MNLI_DIR"  # the local MultiNLI folder of data.source 'local' when data.local_dir is unset

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
ORIGINAL_NAMES = {  # the files of the MultiNLI 1.0 zip
    "train": "multinli_1.0_train.jsonl",
    "validation_matched": "multinli_1.0_dev_matched.jsonl",
    "validation_mismatched": "multinli_1.0_dev_mismatched.jsonl",
}
GOLD_LABELS = {name: i for i, name in enumerate(LABELS)} | {"-": -1}
HELD_OUT = "validation"  # the split carved out of train for model selection
HELD_OUT_STREAM = 1_000_003  # offsets the seed of the held-out draw from the training subsample's
COLUMNS = ("pairID", "premise", "hypothesis", "genre", "label")


@dataclass
class NLIData:
    splits: dict  # split name -> datasets.Dataset
    source: str
    fingerprint: str
    dropped_unlabeled: dict = field(default_factory=dict)  # split -> rows with label -1 removed
    files: dict = field(default_factory=dict)  # split -> file path (file sources)

    def __getitem__(self, split):
        return self.splits[split]


# ------------------------------------------------------------------------------------------------ file parsing
def _hf_row(obj: dict, where: str) -> dict:
    missing = [k for k in ("premise", "hypothesis", "label") if k not in obj]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)}; expected premise, hypothesis, label")
    return {"pairID": str(obj.get("pairID") or ""), "premise": obj["premise"], "hypothesis": obj["hypothesis"],
            "genre": obj.get("genre") or "unknown", "label": obj["label"]}


def _original_row(obj: dict, where: str) -> dict:
    missing = [k for k in ("sentence1", "sentence2", "gold_label") if k not in obj]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)}; expected sentence1, sentence2, gold_label")
    gold = obj["gold_label"]
    if gold not in GOLD_LABELS:
        raise DataError(f"{where}: gold_label {gold!r} is not one of {', '.join(GOLD_LABELS)}")
    return {"pairID": str(obj.get("pairID") or ""), "premise": obj["sentence1"], "hypothesis": obj["sentence2"],
            "genre": obj.get("genre") or "unknown", "label": GOLD_LABELS[gold]}


def _check_row(row: dict, where: str) -> dict:
    label = row["label"]
    if isinstance(label, bool) or not isinstance(label, int) or label not in (-1, 0, 1, 2):
        raise DataError(f"{where}: label {label!r} out of range; expected 0 (entailment), 1 (neutral), "
                        "2 (contradiction) or -1 (unlabeled)")
    for key in ("premise", "hypothesis"):
        if not isinstance(row[key], str) or not row[key].strip():
            raise DataError(f"{where}: empty or non-text {key} ({row[key]!r})")
    if not isinstance(row["genre"], str):
        raise DataError(f"{where}: genre must be text, got {row['genre']!r}")
    return row


def _stable_id(row: dict) -> str:
    """An id from the pair's own text: the same row gets the same id on every machine and in every run."""
    text = f"{row['premise']}\0{row['hypothesis']}".encode("utf-8")
    return "h-" + hashlib.sha256(text).hexdigest()[:12]


def fill_pair_ids(rows: list[dict]) -> list[dict]:
    """Rows without a pairID (the hub schema does not require one) get a stable id, so that one-shot prompting can
    tell a training row from a test row and paired comparisons can match rows. A repeated pair gets a suffix."""
    seen: dict[str, int] = {}
    for row in rows:
        if not row["pairID"]:
            base = _stable_id(row)
            seen[base] = seen.get(base, 0) + 1
            row["pairID"] = base if seen[base] == 1 else f"{base}-{seen[base]}"
    return rows


def read_jsonl(path: Path, schema: str = "hf") -> list[dict]:
    """Parse a MultiNLI jsonl file (`hf` schema or the `original` 1.0 schema); fail with file and line."""
    convert = _hf_row if schema == "hf" else _original_row
    rows = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a leading BOM is harmless
            except UnicodeDecodeError as exc:
                raise DataError(f"{where}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON ({exc.msg}, column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            rows.append(_check_row(convert(obj, where), where))
    if not rows:
        raise DataError(f"{path}: the file is empty; expected one JSON object per line")
    return fill_pair_ids(rows)


def _split_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Find each split's file in a folder, in the hub's naming or the original 1.0 naming."""
    found, missing = {}, []
    for split in SPLITS:
        hf, original = folder / f"{split}.jsonl", folder / ORIGINAL_NAMES[split]
        if hf.is_file():
            found[split] = (hf, "hf")
        elif original.is_file():
            found[split] = (original, "original")
        else:
            missing.append(f"{hf.name} (or {original.name})")
    if missing:
        raise DataError(f"{folder}: split file(s) missing: {', '.join(missing)}")
    return found


def local_folder(data_cfg: dict) -> Path:
    folder = data_cfg.get("local_dir") or os.environ.get(MNLI_DIR_ENV)
    if not folder:
        raise DataError(f"data source 'local' needs data.local_dir in the profile or ${MNLI_DIR_ENV}")
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise DataError(f"local MultiNLI folder {path} does not exist (data.local_dir or ${MNLI_DIR_ENV})")
    return path


def source_files(data_cfg: dict) -> dict[str, tuple[Path, str]]:
    if data_cfg["source"] == "bundled":
        return _split_files(BUNDLED_DIR)
    if data_cfg["source"] == "local":
        return _split_files(local_folder(data_cfg))
    return {}


# ------------------------------------------------------------------------------------------------ fingerprint
def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def data_fingerprint(data_cfg: dict, seed: int) -> str:
    """A hash of what the data *is*: file contents (not paths), subsampling and its seed. Cheap: no parsing."""
    parts = {"source": data_cfg["source"], "train_limit": data_cfg.get("train_limit"),
             "eval_limit": data_cfg.get("eval_limit"), "validation_size": data_cfg.get("validation_size"),
             "seed": seed}
    if data_cfg["source"] == "hub":  # the hub's files are not read here: a pinned revision names their content
        parts["hub_id"] = data_cfg["hub_id"]
        parts["hub_revision"] = data_cfg.get("revision")
    for split, (path, schema) in source_files(data_cfg).items():
        parts[split] = f"{schema}:{_file_digest(path)}"
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ subsampling
def stratified_order(labels, seed: int) -> list[int]:
    """Every row index, ordered so that each prefix keeps the label shares (within one row per label). Each
    label's rows are shuffled with `seed`, the k-th of n_c rows of label c gets the key (k + 0.5) / n_c, and rows
    are sorted by key: taking the first L rows is a stratified sample, and a smaller sample is always part of a
    larger one (150 test rows for the prompting runs are among the 500 the encoders are scored on, so the two can
    be compared row for row)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keys = np.empty(len(labels))
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        keys[members] = (np.arange(len(members)) + 0.5) / len(members)
    return np.lexsort((labels, keys)).tolist()


def stratified_indices(labels, limit: int, seed: int) -> list[int]:
    """Indices (sorted) of `limit` rows keeping each label's share, chosen by `seed`; nested across limits."""
    if limit >= len(labels):
        return list(range(len(labels)))
    return sorted(stratified_order(labels, seed)[:limit])


def held_out_size(data_cfg: dict, pool: int) -> int:
    """`validation_size`: a fraction (< 1) of the rows training would use, or a row count (>= 1)."""
    size = data_cfg.get("validation_size")
    if size is None:
        size = 0.1
    if size >= 1:
        rows = int(size)
    else:
        used = min(pool, data_cfg.get("train_limit") or pool)
        rows = max(len(LABELS), round(size * used))
    if rows >= pool:
        raise DataError(f"data.validation_size {size} leaves no training rows ({pool} labeled training row(s)); "
                        "make it smaller")
    return rows


def split_held_out(train, data_cfg: dict, seed: int):
    """(train, validation): the validation rows drawn first from the whole labeled training pool, stratified;
    `train_limit` then subsamples what is left, so it still counts the rows trained on."""
    order = stratified_order(train["label"], seed + HELD_OUT_STREAM)
    size = held_out_size(data_cfg, len(train))
    validation, rest = train.select(sorted(order[:size])), train.select(sorted(order[size:]))
    limit = data_cfg.get("train_limit")
    if limit:
        rest = rest.select(stratified_indices(rest["label"], limit, seed))
    return rest, validation


# ------------------------------------------------------------------------------------------------ loading
def ensure_hub_dataset_available(hub_id: str, revision: str | None = None) -> None:
    """Within seconds: the dataset (at `revision`) is cached or the hub answers; otherwise a DataError naming
    the fix."""
    from nlilab.models.resolve import hub_reachable, offline_message

    if not _hub_dataset_cached(hub_id, revision) and not hub_reachable():
        at = f" at revision {revision}" if revision else ""
        raise DataError(offline_message(f"dataset '{hub_id}'{at}"))


def _load_hub(data_cfg: dict) -> dict:
    hub_id, revision = data_cfg["hub_id"], data_cfg.get("revision")
    ensure_hub_dataset_available(hub_id, revision)
    import datasets

    loaded = datasets.load_dataset(hub_id, revision=revision)
    return {split: loaded[split].select_columns(list(COLUMNS)) for split in SPLITS}


def _hub_dataset_cached(hub_id: str, revision: str | None = None) -> bool:
    """Whether the hub cache holds the dataset: that commit's snapshot when a commit is pinned, any otherwise
    (a branch name resolves only online)."""
    from nlilab.models.resolve import is_pinned

    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        return False
    repo = Path(HF_HUB_CACHE) / f"datasets--{hub_id.replace('/', '--')}"
    return (repo / "snapshots" / revision).is_dir() if is_pinned(revision) else repo.is_dir()


def _to_dataset(rows: list[dict]):
    import datasets

    features = datasets.Features({
        "pairID": datasets.Value("string"), "premise": datasets.Value("string"),
        "hypothesis": datasets.Value("string"), "genre": datasets.Value("string"),
        "label": datasets.Value("int64"),
    })
    return datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in COLUMNS}, features=features)


def load_nli(data_cfg: dict, seed: int = 0) -> NLIData:
    """The three splits for a profile's `data` block, unlabeled rows dropped, optionally subsampled."""
    source = data_cfg["source"]
    files = source_files(data_cfg)
    if source == "hub":
        raw = _load_hub(data_cfg)
    else:
        raw = {split: _to_dataset(read_jsonl(path, schema)) for split, (path, schema) in files.items()}
    splits, dropped = {}, {}
    for split in SPLITS:
        before = len(raw[split])
        labeled = raw[split].filter(lambda batch: [x != -1 for x in batch["label"]], batched=True)
        dropped[split] = before - len(labeled)
        if len(labeled) == 0:  # caught here, not as an obscure error deep in training or scoring
            where = files[split][0] if split in files else f"{data_cfg.get('hub_id')} [{split}]"
            raise DataError(f"{where}: no labeled rows ({before} row(s), all with label -1 / gold_label '-'); "
                            "expected at least one labeled pair")
        limit = data_cfg.get("eval_limit")
        if split == "train":
            splits["train"], splits[HELD_OUT] = split_held_out(labeled, data_cfg, seed)
            continue
        if limit:
            labeled = labeled.select(stratified_indices(labeled["label"], limit, seed))
        splits[split] = labeled
    return NLIData(splits, source, data_fingerprint(data_cfg, seed), dropped,
                   {split: str(path) for split, (path, _) in files.items()})


def describe(data: NLIData):
    """Per-split sizes and label shares, as a pandas DataFrame (for the data notebook and the report)."""
    import pandas as pd

    rows = []
    for split, ds in data.splits.items():
        counts = np.bincount(np.asarray(ds["label"], dtype=int), minlength=len(LABELS))
        row = {"split": split, "rows": len(ds), "dropped_unlabeled": data.dropped_unlabeled.get(split, 0),
               "genres": len(set(ds["genre"]))}
        row.update({label: int(c) for label, c in zip(LABELS, counts)})
        rows.append(row)
    return pd.DataFrame(rows).set_index("split")


def overview_metrics(data: NLIData) -> dict:
    """What the data notebook records: sizes, label and genre counts, the -1 filter's count, fingerprint."""
    summary = describe(data)
    return {
        "data_source": data.source,
        "data_fingerprint": data.fingerprint,
        "dropped_unlabeled": data.dropped_unlabeled,
        "data_sizes": {split: len(ds) for split, ds in data.splits.items()},
        "label_counts": {split: {label: int(summary.loc[split, label]) for label in LABELS}
                         for split in data.splits},
        "genre_counts": {split: {str(g): int(c) for g, c in ds.to_pandas()["genre"].value_counts().items()}
                         for split, ds in data.splits.items()},
        "files": data.files,
    }
