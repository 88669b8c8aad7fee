"""``torchrun --nproc_per_node 2 -m curate train``: two gloo processes on CPU train one
data-parallel model; process 0 alone prepares the folder, checkpoints and writes the model, and
the job resumes under torchrun as in one process. The two processes are started with the
variables torchrun sets (``tests/reliability/helpers.py: torchrun``)."""

from __future__ import annotations

import json

import pytest

from tests.reliability.helpers import torchrun


def _torchrun(*args: str):
    return torchrun("train", *args, timeout=300)


@pytest.mark.timeout(600)
def test_two_processes_train_one_model_and_resume(digits_runs, tmp_path):
    run = digits_runs(32)
    model = tmp_path / "model"
    common = ["--dataset", str(run), "--out", str(model), "--model", "tiny", "--resolution", "8",
              "--batch-size", "8", "--log-every", "5", "--checkpoint-every", "10", "-q"]  # fmt: skip
    first = _torchrun(*common, "--steps", "20")
    assert first.rc == 0, first.stderr[-3000:]
    assert first.stdout.count("model written to") == 1  # process 0 speaks for the job
    info = json.loads((model / "curate_train.json").read_text())
    assert info["resolved"]["world_size"] == 2
    losses = [loss for _, loss in info["result"]["losses"]]
    assert info["result"]["step"] == 20 and losses[-1] < losses[0]
    steps = sorted(p.name for p in (model / "checkpoints").iterdir())
    assert steps == ["step-0000010", "step-0000020"]

    again = _torchrun(*common, "--steps", "30", "--resume")
    assert again.rc == 0, again.stderr[-3000:]
    info = json.loads((model / "curate_train.json").read_text())
    assert info["result"]["step"] == 30 and info["resolved"]["world_size"] == 2
    # the resumed job continued the first one's loss record instead of starting over
    assert [s for s, _ in info["result"]["losses"]] == [5, 10, 15, 20, 25, 30]
