"""Progress on long work, shown where the run is being watched.

In Jupyter the usual widgets. In a notebook executed by `nlilab run` (papermill) widgets reach neither the
terminal nor the log file, which carry text only: there the runner sets NLILAB_PROGRESS=text for the kernel,
and training prints a line per tenth of its steps and per evaluation, scoring a text bar.
"""

from __future__ import annotations

import os
import sys
import time

ENV = "NLILAB_PROGRESS"


def text_mode() -> bool:
    return os.environ.get(ENV) == "text"


def bar(iterable, **kwargs):
    """tqdm over `iterable`: a widget in Jupyter, text (refreshed every few seconds) under the runner."""
    if text_mode():
        from tqdm.std import tqdm

        kwargs.setdefault("mininterval", 5.0)
        kwargs.setdefault("file", sys.stdout)
    else:
        from tqdm.auto import tqdm
    return tqdm(iterable, **kwargs)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def trainer_callbacks(label: str) -> list:
    """Callbacks for the Trainer: in text mode, one line per tenth of training and per evaluation."""
    if not text_mode():
        return []
    from transformers import TrainerCallback

    class LineProgress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.started, self.start_step = time.perf_counter(), state.global_step
            self.every = max(1, state.max_steps // 10)
            print(f"[{label}] training: {state.max_steps} steps, from step {state.global_step}", flush=True)

        def on_step_end(self, args, state, control, **kwargs):
            step, total = state.global_step, state.max_steps
            if step % self.every and step != total:
                return
            elapsed = time.perf_counter() - self.started
            done = max(1, step - self.start_step)
            left = elapsed / done * (total - step)
            losses = [e["loss"] for e in state.log_history if "loss" in e]
            loss = f", loss {losses[-1]:.4f}" if losses else ""
            print(f"[{label}] step {step}/{total} ({100 * step / total:.0f}%), epoch {state.epoch:.2f}{loss}; "
                  f"{_clock(elapsed)} elapsed, about {_clock(left)} left", flush=True)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            metrics = metrics or {}
            accuracy = metrics.get("eval_accuracy")
            shown = f"accuracy {100 * accuracy:.1f}%, " if accuracy is not None else ""
            print(f"[{label}] evaluation at epoch {state.epoch:.2f}: {shown}"
                  f"loss {metrics.get('eval_loss', float('nan')):.4f}", flush=True)

    return [LineProgress()]
