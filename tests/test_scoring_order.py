"""How the Trainer's scoring is ordered: rows go through the model longest first (each batch pads to its own
longest row) and come back in the dataset's order; the held-out split's scores come from the evaluation after
the last optimizer step where there was one, rather than from a second pass over the same rows."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from nlilab.training.trainer import (
    ROW,
    HeldOutAccuracy,
    final_evaluation,
    longest_first,
    predict_rows,
)

LENGTHS = [3, 9, 1, 9, 5, 2, 7]


def dataset():
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [[1] * n for n in LENGTHS]})


def test_rows_are_scored_longest_first_and_come_back_in_dataset_order():
    class Recorder:  # each row's "logits" name its row, so that any mix-up shows
        def predict(self, rows):
            self.seen = [len(ids) for ids in rows["input_ids"]]
            index = np.asarray(rows[ROW])
            return SimpleNamespace(predictions=np.stack([index, index * 10], axis=1), label_ids=index)

    trainer = Recorder()
    logits = predict_rows(trainer, dataset())
    assert trainer.seen == sorted(LENGTHS, reverse=True)
    assert logits.tolist() == [[i, 10 * i] for i in range(len(LENGTHS))]


def evaluated_trainer(eval_steps: list[int], global_step: int, logits=None):
    """A trainer whose HeldOutAccuracy saw one evaluation of the split, in longest-first order."""
    metrics = HeldOutAccuracy(longest_first(dataset()))
    if logits is not None:
        labels = np.zeros(len(logits), dtype=int)
        metrics((logits, labels))
    history = [{"loss": 1.0, "step": 1}] + [{"eval_loss": 1.0, "step": s} for s in eval_steps]
    return SimpleNamespace(compute_metrics=metrics, state=SimpleNamespace(log_history=history,
                                                                           global_step=global_step))


def test_the_evaluation_after_the_last_step_gives_the_held_out_scores_in_dataset_order():
    rows = dataset()
    in_dataset_order = np.arange(len(LENGTHS) * 3, dtype=float).reshape(len(LENGTHS), 3)
    evaluated = in_dataset_order[longest_first(rows)]  # what the Trainer's evaluation returned
    trainer = evaluated_trainer([4, 8], global_step=8, logits=evaluated)
    assert final_evaluation(trainer, rows).tolist() == in_dataset_order.tolist()


@pytest.mark.parametrize("eval_steps, global_step, evaluated", [
    ([4], 8, True),   # the schedule's last evaluation came before the last step: not the final model
    ([], 8, False),   # no evaluation
    ([8], 8, False),  # evaluated before a restart, none in this process (a resumed run)
])
def test_no_evaluation_of_the_final_model_here_means_scoring_again(eval_steps, global_step, evaluated):
    logits = np.zeros((len(LENGTHS), 3)) if evaluated else None
    assert final_evaluation(evaluated_trainer(eval_steps, global_step, logits), dataset()) is None
