"""`self_improve` end to end on a tiny model: two rounds through the entry point, and a run killed in the middle of
training that, rerun with the same command, ends with the same results as an uninterrupted one.

Every run is a `python -m lsi.main` subprocess on one CPU device at XLA's normal optimisation level: the tiny model
has SmolLM2's 49152-token vocabulary, whose matrices the suite's unoptimised 8-device setting makes ~10x slower.
"""

import hashlib
import json
import pathlib
import signal
import subprocess
import time

import pytest
from helpers.runs import REPO, build_answering_model, command, environment, run

from lsi.io_utils import json_line


@pytest.fixture(scope="module")
def answering_model(tmp_path_factory):
    return build_answering_model(tmp_path_factory.mktemp("answering_model"))


def _command(run_dir, model) -> list[str]:
    return command(run_dir, model, num_rounds=2)


def _run(run_dir, model) -> None:
    run(_command(run_dir, model))


def _results(run_dir: pathlib.Path) -> dict:
    """What a finished run must reproduce: every eval's predictions, every round's training metrics and data."""
    out = {}
    for path in sorted(run_dir.glob("eval/*/*/*/predictions.jsonl")):
        # The prompt's text, kept since the pin was recorded, is the inputs', not a result: the lines without it.
        out[str(path.relative_to(run_dir))] = "".join(
            json_line({k: v for k, v in json.loads(line).items() if k != "prompt"})
            for line in path.read_text().splitlines())
    for path in sorted(run_dir.glob("round_*/train/metrics.jsonl")):
        out[str(path.relative_to(run_dir))] = [{k: v for k, v in json.loads(line).items()  # timings differ
                                                if not k.endswith("_per_s") and k != "mfu"}
                                               for line in path.read_text().splitlines()]
    for path in sorted(run_dir.glob("round_*/*/votes/pseudo_labels.jsonl")):
        out[str(path.relative_to(run_dir))] = path.read_text()
    return out


# sha256 of `_results` of the uninterrupted run, recorded with the code of d5c084e and unchanged by the reshaping
# after it (the trainer's Parameterization, answer types as objects, Block's explicit methods, custom_grads as an
# option): a change to this run's predictions, votes or training metrics has to be deliberate.
PINNED_RESULTS_SHA256 = "cb03f8a79d63617869b1bc7a1e81c4f6a3760c3887a2b22fc06ec2c15d9bebbd"


def test_two_rounds_then_a_run_killed_mid_training_resumes_to_the_same_results(answering_model, tmp_path):
    reference = tmp_path / "uninterrupted"
    _run(reference, answering_model)
    digest = hashlib.sha256(json.dumps(_results(reference), sort_keys=True).encode()).hexdigest()
    assert digest == PINNED_RESULTS_SHA256, "the tiny two-round run's predictions, votes or training changed"
    summary = json.loads((reference / "summary.json").read_text())
    assert set(summary["eval"]) == {"base", "round_1", "round_2"}
    for round_index in (1, 2):
        round_dir = reference / f"round_{round_index}"
        assert json.loads((round_dir / "arithmetic" / "votes" / "manifest.json").read_text())["counts"][
            "pseudo_labels"] > 0
        assert (round_dir / "train" / "hf" / "config.json").exists()
    # Round 2 samples with round 1's model, not the base model.
    assert json.loads((reference / "round_2" / "arithmetic" / "samples" / "sampling_config.json").read_text())[
        "model"] == str(reference / "round_1" / "train" / "hf")
    assert (reference / "report" / "report.md").exists()

    killed = tmp_path / "killed"
    process = subprocess.Popen(_command(killed, answering_model), cwd=REPO, env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoints = killed / "round_1" / "train" / "checkpoints"
    deadline = time.monotonic() + 1200
    while not (checkpoints / "2").exists():
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "round_1" / "train" / "hf").exists(), "the kill came after training finished"

    _run(killed, answering_model)  # the same command again
    assert _results(killed) == _results(reference)
