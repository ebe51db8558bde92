"""Training a sequence classifier with the Hugging Face Trainer, and scoring it on both dev splits.

Shared by every trained method (full, top layers, LoRA, prompts, QLoRA): the method decides which parameters
train; this module decides how (dynamic padding, length-grouped batches, per-epoch evaluation, checkpoints that
a rerun resumes from) and measures the run (history, wall time, throughput, peak memory, size on disk). The same
code runs in each process of a multi-process experiment (nlilab.training.distributed): there the Trainer trains
data-parallel, predictions are gathered from every process, and only rank 0 saves.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from nlilab import EVAL_SPLITS
from nlilab.data.nli import HELD_OUT
from nlilab.errors import NlilabError
from nlilab.training.precision import compute_dtype, precision_record
from nlilab.evaluation.metrics import score
from nlilab.progress import text_mode, trainer_callbacks
from nlilab.results import count_parameters, dir_size_bytes, peak_memory_mb
from nlilab.training import distributed
from nlilab.training.costs import (
    WINDOW_REPEATS,
    WINDOW_WARMUP,
    SeedMeter,
    step_lock_callback,
    training_window,
)

CHECKPOINTS = "checkpoints"
ROW = "nlilab_row"  # each scored row's index, carried through prediction and back (predict_rows)


# ------------------------------------------------------------------------------------------------ device
def resolve_device(config: dict) -> str:
    """'cpu' or 'cuda', refusing GPU-only settings on a machine without a GPU rather than changing them."""
    import torch

    has_cuda = torch.cuda.is_available()
    device = config.get("device", "auto")
    if device == "cuda" and not has_cuda:
        raise NlilabError(f"experiment '{config['name']}': device is 'cuda' but no GPU is visible; "
                          "set device: auto or cpu, or use the cpu profile")
    device = "cuda" if device == "auto" and has_cuda else ("cpu" if device == "auto" else device)
    if config.get("precision") == "auto":  # chosen once, for this machine; the choice and its reason are recorded
        config["precision_choice"] = precision_record("auto", device)
        config["precision"] = config["precision_choice"]["precision"]
    if config.get("compute_dtype") == "auto":  # QLoRA's 4-bit weights are dequantized to the run's precision
        config["compute_dtype"] = compute_dtype("auto", config.get("precision", "fp32"))
    if config.get("precision") == "fp16" and device != "cuda":
        raise NlilabError(f"experiment '{config['name']}': precision fp16 needs a GPU and none is visible; "
                          "use precision: fp32 (or bf16) on the CPU")
    if config.get("precision") == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise NlilabError(f"experiment '{config['name']}': precision bf16 is not supported by this GPU; use fp16")
    return device


# ------------------------------------------------------------------------------------------------ data
def tokenize_splits(data, tokenizer, max_length: int) -> dict:
    """Tokenize every split once, without padding (the collator pads each batch to its own longest row)."""

    def encode(batch):
        return tokenizer(batch["premise"], batch["hypothesis"], truncation=True, max_length=max_length)

    out = {}
    for split, ds in data.splits.items():
        keep = ["label"]
        out[split] = ds.map(encode, batched=True, remove_columns=[c for c in ds.column_names if c not in keep],
                            desc=f"tokenize {split}")
        out[split] = out[split].rename_column("label", "labels")
    return out


# ------------------------------------------------------------------------------------------------ history
def epoch_history(steps: list[dict], evals: list[dict]) -> list[dict]:
    """The seed report's table: epoch, training loss (mean of the epoch's logged losses), validation loss,
    validation accuracy (on the held-out validation split, never on a test split)."""
    rows = []
    previous = 0.0
    for ev in evals:
        epoch = ev["epoch"]
        losses = [s["loss"] for s in steps if previous < s["epoch"] <= epoch + 1e-9]
        rows.append({"epoch": round(epoch, 3), "train_loss": float(np.mean(losses)) if losses else None,
                     "validation_loss": ev["validation_loss"], "accuracy": ev["accuracy"]})
        previous = epoch
    return rows


class HeldOutAccuracy:
    """The Trainer's `compute_metrics` for the held-out split: accuracy, and the latest evaluation's logits kept,
    put back in the split's own order (the Trainer evaluates its rows in `order`, build_trainer's longest first).
    When that evaluation came after the last optimizer step it scored the final model on the same rows in the
    same batches as a prediction would (fit_and_evaluate reuses it: a second pass was 113 s of the cpu profile's
    QLoRA run)."""

    def __init__(self, order: np.ndarray | None = None):
        self.order = order
        self.logits = None

    def __call__(self, eval_pred):
        logits, labels = eval_pred
        logits = logits[0] if isinstance(logits, tuple) else logits
        accuracy = float((np.argmax(logits, axis=-1) == labels).mean())
        if self.order is None:
            self.logits = logits
        elif len(self.order) == len(logits):
            self.logits = np.empty_like(logits)
            self.logits[self.order] = logits
        else:  # not the rows build_trainer ordered: final_evaluation then scores the split again
            self.logits = None
        return {"accuracy": accuracy}


# ------------------------------------------------------------------------------------------------ training
def training_arguments(config: dict, run_dir: Path, seed: int, device: str, learning_rate: float | None = None,
                       evaluate: bool = True):
    from transformers import TrainingArguments

    train = config["train"]
    kwargs = dict(
        output_dir=str(run_dir / CHECKPOINTS),
        num_train_epochs=train["epochs"],
        max_steps=train["max_steps"] or -1,
        per_device_train_batch_size=distributed.per_process_batch(train["batch_size"]),
        per_device_eval_batch_size=train["eval_batch_size"],
        gradient_accumulation_steps=train["gradient_accumulation_steps"],
        learning_rate=learning_rate or train["learning_rate"],
        weight_decay=train["weight_decay"],
        # transformers 5: warmup_ratio is gone; a float warmup_steps below 1 is read as a ratio.
        warmup_steps=float(train["warmup_ratio"]) if train["warmup_ratio"] < 1 else int(train["warmup_ratio"]),
        lr_scheduler_type="linear",
        eval_strategy="epoch" if not train["max_steps"] else "steps",
        eval_steps=None if not train["max_steps"] else max(1, train["max_steps"] // 2),
        save_strategy="epoch" if not train["max_steps"] else "steps",
        save_steps=None if not train["max_steps"] else max(1, train["max_steps"] // 2),
        save_total_limit=train["save_total_limit"],
        logging_steps=train["logging_steps"],
        seed=seed,
        data_seed=seed,
        report_to="none",
        use_cpu=device == "cpu",
        bf16=config.get("precision") == "bf16",
        fp16=config.get("precision") == "fp16",
        dataloader_num_workers=0,
        disable_tqdm=text_mode(),  # under the runner, progress lines instead (nlilab.progress)
        **distributed.trainer_settings(device, config.get("gradient_checkpointing", False)),
    )
    if train["group_by_length"]:
        kwargs["train_sampling_strategy"] = "group_by_length"
    if not evaluate:  # benchmarks time the optimisation alone
        kwargs.update(eval_strategy="no", save_strategy="no", eval_steps=None, save_steps=None)
    return TrainingArguments(**kwargs)


def _last_checkpoint(run_dir: Path) -> str | None:
    """The newest *complete* checkpoint. The Trainer writes a checkpoint in place, trainer_state.json last, so a
    run killed while saving leaves a folder without it (or with half of it); resuming from that folder would
    crash. The previous checkpoint is still there: the Trainer deletes old ones only after saving a new one."""
    import json
    import re

    found = []
    for path in (run_dir / CHECKPOINTS).glob("checkpoint-*"):
        step = re.fullmatch(r"checkpoint-(\d+)", path.name)
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if step:
            found.append((int(step.group(1)), str(path)))
    return max(found)[1] if found else None


def _ordered_eval_trainer():
    from torch.utils.data import SequentialSampler
    from transformers import Trainer

    class OrderedEvalTrainer(Trainer):
        """transformers 5 applies `group_by_length` to evaluation and prediction as well, through a *shuffled*
        length-grouped sampler: `predict` then returns rows in another order than the dataset's, and scoring them
        against the dataset's labels is scoring against the wrong labels. Evaluation keeps the dataset's order, in
        several processes too (accelerate deals the sequential batches out to the processes, and gathering puts
        them back in order).

        A dataset with a ROW column (predict_rows) gets each row's index back in place of its label."""

        def _get_eval_sampler(self, eval_dataset):
            if eval_dataset is None:
                return super()._get_eval_sampler(eval_dataset)
            return SequentialSampler(eval_dataset)

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()  # the model's inputs: other columns are dropped
            if ROW not in self._signature_columns:
                self._signature_columns.append(ROW)

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            rows = inputs.pop(ROW, None)  # not a model input
            loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
            return loss, logits, labels if rows is None else rows

    return OrderedEvalTrainer


def build_trainer(model, tokenizer, tokenized: dict, config: dict, seed: int, run_dir: Path,
                  learning_rate: float | None = None, evaluate: bool = True):
    """The Trainer every trained method uses: dynamic padding (each batch padded to its own longest row),
    length-grouped training batches, per-epoch evaluation on the held-out validation split (its rows longest
    first; the dev sets are test sets and are scored only once, after training). `evaluate=False` is for
    benchmarks."""
    from transformers import DataCollatorWithPadding

    args = training_arguments(config, Path(run_dir), seed, resolve_device(config), learning_rate, evaluate)
    label = " ".join(filter(None, [config.get("name"), f"seed {seed}", learning_rate and f"lr {learning_rate:g}"]))
    order = longest_first(tokenized[HELD_OUT]) if evaluate else None
    return _ordered_eval_trainer()(
        model=model,
        args=args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized[HELD_OUT].select(order) if evaluate else None,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=HeldOutAccuracy(order),
        # the shared side of the timing windows' lock: another process's window pauses this one between steps;
        # progress lines from one process of several
        callbacks=[*(trainer_callbacks(label) if distributed.is_main() else []), step_lock_callback()],
    )


def method_window(model, tokenizer, tokenized: dict, config: dict, seed: int, learning_rate: float | None = None):
    """The method's cost on one core with nothing else of nlilab running (nlilab.training.costs.training_window): the same
    fixed rows and step count for every method of a profile, so throughputs compare whatever --jobs was."""
    from transformers import DataCollatorWithPadding

    train = config["train"]
    steps, warmup = train["window_steps"], min(train["window_steps"], WINDOW_WARMUP)
    # a QLoRA step takes seconds on a CPU: one run of its steps averages enough, three would cost minutes
    repeats = 1 if config["kind"] == "qlora" else WINDOW_REPEATS
    return training_window(model, DataCollatorWithPadding(tokenizer), tokenized["train"], train["batch_size"],
                           device=resolve_device(config), seed=config["seed"], steps=steps, warmup=warmup,
                           repeats=repeats,
                           learning_rate=learning_rate or train["learning_rate"], precision=config["precision"])


def fit_and_evaluate(model, tokenizer, tokenized: dict, data, config: dict, seed: int, run_dir: Path,
                     save=None, learning_rate: float | None = None, keep_model: bool = True,
                     window: bool = False) -> dict:
    """Train one seed (resuming from its last checkpoint if a previous run was killed), score the held-out
    validation split and both test splits once, save what reuse needs, and return the seed's result (the
    experiment writes it as run.json, then calls `remove_checkpoints`). `window`: time the method first (see
    `method_window`)."""
    run_dir = Path(run_dir)
    # one process of several times the method: the window is one process on one core whatever trains after it
    window = window and config["train"]["window_steps"] > 0 and distributed.is_main()
    timed = method_window(model, tokenizer, tokenized, config, seed, learning_rate) if window else None
    trainer = build_trainer(model, tokenizer, tokenized, config, seed, run_dir, learning_rate)
    resume = _last_checkpoint(run_dir)
    with SeedMeter() as meter:  # this seed's own time and peak memory, whatever ran before it
        train_out = trainer.train(resume_from_checkpoint=resume)
    cost = meter.record()
    # Rebuild the history from the Trainer's state so epochs done before a resume are included.
    steps = [{"step": e["step"], "epoch": e["epoch"], "loss": e["loss"]} for e in trainer.state.log_history if "loss" in e]
    evals = [{"epoch": e["epoch"], "validation_loss": e["eval_loss"], "accuracy": e.get("eval_accuracy")}
             for e in trainer.state.log_history if "eval_loss" in e]
    run = {"seed": seed, "learning_rate": learning_rate or config["train"]["learning_rate"],
           "resumed_from": Path(resume).name if resume else None,
           "history": epoch_history(steps, evals), "step_losses": steps,
           "train_wall_time_s": cost["wall_s"], "train_cpu_time_s": cost["cpu_s"], "cost": cost, "window": timed,
           "train_samples_per_second": train_out.metrics.get("train_samples_per_second"),
           "train_examples": len(tokenized["train"])}
    run.update(count_parameters(model))
    for split in (HELD_OUT, *EVAL_SPLITS):  # the final model, scored once on each
        logits = final_evaluation(trainer, tokenized[split]) if split == HELD_OUT else None
        logits = predict_rows(trainer, tokenized[split], split) if logits is None else logits
        run[split] = score(data[split]["label"], np.argmax(logits, axis=-1), data[split]["genre"],
                           data[split]["pairID"])
    run.update(peak_memory_mb())
    run["disk_size_bytes"] = save_model(model, save, run_dir, keep_model) if distributed.is_main() else None
    return run


def final_evaluation(trainer, held_out):
    """The held-out split's logits, in its order, from the evaluation this process ran after the last optimizer
    step; None where there was none (a resumed run, an evaluation schedule that ended earlier) or where several
    processes evaluated (predict_rows checks their gather row by row)."""
    metrics = trainer.compute_metrics
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    if (not isinstance(metrics, HeldOutAccuracy) or metrics.logits is None or not evals
            or evals[-1]["step"] != trainer.state.global_step or distributed.world_size() > 1
            or len(metrics.logits) != len(held_out)):
        return None
    return metrics.logits


def longest_first(dataset) -> np.ndarray:
    """Row order for scoring, longest rows first. Each batch is padded to its own longest row: in the dataset's
    order the bundled test sets' batches of 64 put 1.5 padded tokens through the model for each real one, sorted
    1.1. The order is undone after prediction (predict_rows); the evaluation's accuracy and loss need no order."""
    lengths = np.fromiter((len(ids) for ids in dataset["input_ids"]), dtype=np.int64, count=len(dataset))
    return np.argsort(-lengths, kind="stable")


def predict_rows(trainer, dataset, split: str = "rows"):
    """The logits of every row of `dataset`, in the dataset's order (scored longest first). In several processes
    each scores its shard of the batches and the Trainer gathers them, dropping the rows the last batches repeat
    to even the shards out; each prediction carries its row's index back, so that a row scored twice or never is
    an error, never a prediction scored against another row's label."""
    count = len(dataset)
    order = longest_first(dataset)
    out = trainer.predict(dataset.select(order).add_column(ROW, order.tolist()))
    logits = out.predictions[0] if isinstance(out.predictions, tuple) else out.predictions
    rows = np.asarray(out.label_ids).reshape(-1)
    if not np.array_equal(np.sort(rows), np.arange(count)):
        seen = np.bincount(rows[(rows >= 0) & (rows < count)], minlength=count)
        raise NlilabError(f"{split}: {len(rows)} predictions came back for {count} rows ({int((seen == 0).sum())} "
                          f"rows missing, {int((seen > 1).sum())} scored more than once); the processes' "
                          "predictions were not gathered one per row")
    return logits[np.argsort(rows, kind="stable")]


def save_model(model, save, run_dir: Path, keep_model: bool) -> int:
    """Save what reuse needs under run_dir/model (`save`, or the model's own save_pretrained); its size on disk.
    Without `keep_model` the folder goes again: the size is still recorded."""
    model_dir = run_dir / "model"
    (save or model.save_pretrained)(str(model_dir))
    size = dir_size_bytes(model_dir)
    if not keep_model:
        shutil.rmtree(model_dir, ignore_errors=True)
    return size


def remove_checkpoints(run_dir: Path) -> None:
    """Checkpoints exist only to survive a crash; once the seed's run.json is written they are dead weight.
    (Deleted after it, not before: a kill while deleting gigabytes must not cost the finished seed.)"""
    shutil.rmtree(Path(run_dir) / CHECKPOINTS, ignore_errors=True)

