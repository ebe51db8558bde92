"""Progress lines for runs whose output is text only (nlilab.progress)."""

from types import SimpleNamespace

from nlilab import progress


def test_widgets_in_jupyter_text_under_the_runner(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    assert progress.trainer_callbacks("x") == [] and not progress.text_mode()
    monkeypatch.setenv(progress.ENV, "text")
    (callback,) = progress.trainer_callbacks("x")
    assert type(progress.bar([1, 2])).__module__ == "tqdm.std"


def test_a_line_per_tenth_of_the_steps_and_per_evaluation(monkeypatch, capsys):
    monkeypatch.setenv(progress.ENV, "text")
    (callback,) = progress.trainer_callbacks("lora seed 1")
    state = SimpleNamespace(global_step=0, max_steps=25, epoch=0.0, log_history=[])
    callback.on_train_begin(None, state, None)
    for step in range(1, 26):
        state.global_step, state.epoch = step, step / 25
        state.log_history.append({"loss": 1.0 / step})
        callback.on_step_end(None, state, None)
    callback.on_evaluate(None, state, None, metrics={"eval_accuracy": 0.4567, "eval_loss": 1.01})
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "[lora seed 1] training: 25 steps, from step 0"
    steps = [line for line in lines if " step " in line and "training" not in line]
    assert len(steps) == 13  # every 2nd step (25 // 10), and the last
    assert steps[-1].startswith("[lora seed 1] step 25/25 (100%), epoch 1.00, loss 0.0400;")
    assert lines[-1] == "[lora seed 1] evaluation at epoch 1.00: accuracy 45.7%, loss 1.0100"
