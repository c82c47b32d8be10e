"""Crash and concurrency tests: every stage killed with SIGKILL at 3 seeded random moments, then rerun with the same
command, ends with exactly the files of an uninterrupted run (timing fields aside: `helpers.runs.TIMING_FIELDS`);
two processes started on one stage give one run's files.

A stage's moment is drawn from its own uninterrupted run: the time from its lock appearing (the stage claimed its
folder, so the process has imported everything and loaded its inputs) to the process exiting; each kill lands at a
seeded fraction of that window. `self_improve` is killed at a seeded fraction of its whole run.
"""

import random
import shutil
import signal
import subprocess
import time

import pytest

from helpers.runs import REPO, build_answering_model, command, environment, run, snapshot
from lsi.stage_lock import lock_path

KILLS_PER_STAGE = 3
# stage -> (its output folders, the upstream folders it reads, extra flags); one round, eval of the trained model.
STAGES = {
    "sample": (["round_1/arithmetic/samples"], [], ()),
    "vote": (["round_1/arithmetic/votes"], ["round_1/arithmetic/samples"], ()),
    "format": (["round_1/arithmetic/formats"], ["round_1/arithmetic/samples", "round_1/arithmetic/votes"], ()),
    "train": (["round_1/train"], ["round_1/arithmetic/samples", "round_1/arithmetic/votes",
                                  "round_1/arithmetic/formats"], ()),
    "eval": (["eval/round_1/arithmetic"], ["round_1/arithmetic/samples", "round_1/arithmetic/votes",
                                "round_1/arithmetic/formats", "round_1/train"], ("--eval_model=trained",)),
}


@pytest.fixture(scope="module")
def answering_model(tmp_path_factory):
    return build_answering_model(tmp_path_factory.mktemp("answering_model"))


@pytest.fixture(scope="module")
def reference(answering_model, tmp_path_factory):
    """The stages run one by one, uninterrupted: (run_dir, {stage: seconds from its lock appearing to exit})."""
    # Every run folder is called "run": the SeqIO task of a run's formatted data is named after its folder.
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    windows = {}
    for stage, (outputs, _, extra) in STAGES.items():
        windows[stage] = _work_window(command(run_dir, answering_model, stage, extra=extra), run_dir / outputs[0])
    return run_dir, windows


def _work_window(cmd, output_dir) -> float:
    """Runs `cmd` to completion; seconds from the output folder's lock appearing to the process exiting."""
    process = subprocess.Popen(cmd, cwd=REPO, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    claimed = _wait_for_lock(process, output_dir)
    _, stderr = process.communicate(timeout=1200)
    assert process.returncode == 0, stderr.decode()[-3000:]
    return time.monotonic() - claimed


def _wait_for_lock(process, output_dir) -> float:
    """Waits for the stage to claim `output_dir` (its lock, or the lineage.json written under it, appears)."""
    deadline = time.monotonic() + 1200
    while not (lock_path(output_dir).exists() or (output_dir / "lineage.json").exists()):
        assert process.poll() is None, f"exited before claiming {output_dir}: {process.stderr.read().decode()[-3000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    return time.monotonic()


def _kill_at(cmd, output_dir, delay: float) -> bool:
    """Starts the stage and SIGKILLs it `delay` seconds after it claims its folder; False if it finished first."""
    process = subprocess.Popen(cmd, cwd=REPO, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for_lock(process, output_dir)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process.returncode == -signal.SIGKILL


def _killed_copy(reference_dir, run_dir, upstream, cmd, output_dir, delay: float) -> None:
    """A run folder whose stage was killed mid-work. The reference window is measured under one CPU load and the kill
    lands under another: a stage that finishes first is run again from a fresh copy, killed at half the delay."""
    for _ in range(4):
        _copy_upstream(reference_dir, run_dir, upstream)
        if _kill_at(cmd, output_dir, delay):
            return
        shutil.rmtree(run_dir)
        delay /= 2
    raise AssertionError(f"the stage finished before a kill {delay:.2f} s after it claimed {output_dir}")


def _copy_upstream(reference_dir, run_dir, folders) -> None:
    run_dir.mkdir(parents=True)
    for folder in folders:
        shutil.copytree(reference_dir / folder, run_dir / folder)
    shutil.copy(reference_dir / "config.gin", run_dir / "config.gin")


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_killed_at_random_moments_resumes_to_the_uninterrupted_files(stage, reference, answering_model,
                                                                            tmp_path):
    reference_dir, windows = reference
    outputs, upstream, extra = STAGES[stage]
    rng = random.Random(f"kill {stage}")
    for kill in range(KILLS_PER_STAGE):
        run_dir = tmp_path / f"kill_{kill}" / "run"
        cmd = command(run_dir, answering_model, stage, extra=extra)
        # Up to 80% of the window: late enough to hit the writes, early enough to land before the exit.
        delay = rng.uniform(0.0, 0.8) * windows[stage]
        _killed_copy(reference_dir, run_dir, upstream, cmd, run_dir / outputs[0], delay)
        run(cmd)  # the same command again
        for folder in outputs:
            assert snapshot(run_dir / folder, run_dir) == snapshot(reference_dir / folder, reference_dir), (
                stage, kill, folder)
            assert not list((run_dir / folder).rglob("*.tmp")), "a temporary file survived the rerun"


def test_self_improve_killed_at_random_moments_resumes_to_the_uninterrupted_files(answering_model, tmp_path):
    reference_dir = tmp_path / "uninterrupted" / "run"
    start = time.monotonic()
    run(command(reference_dir, answering_model))
    duration = time.monotonic() - start
    rng = random.Random("kill self_improve")
    for kill in range(KILLS_PER_STAGE):
        run_dir = tmp_path / f"kill_{kill}" / "run"
        cmd = command(run_dir, answering_model)
        delay = rng.uniform(0.1, 0.9) * duration
        for _ in range(4):  # a run that finished before the kill (the load fell) is redone, killed earlier
            process = subprocess.Popen(cmd, cwd=REPO, env=environment(), stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
            if process.wait() == -signal.SIGKILL:
                break
            shutil.rmtree(run_dir)
            delay /= 2
        else:
            raise AssertionError("self_improve finished before every kill")
        run(cmd)
        assert snapshot(run_dir, run_dir) == snapshot(reference_dir, reference_dir), kill
    # A rerun of the finished run keeps everything, the training metrics in summary.json included.
    run(command(reference_dir, answering_model))
    summary = (reference_dir / "summary.json").read_text()
    assert '"final_metrics": null' not in summary and '"loss"' in summary


def test_two_processes_on_one_stage_give_one_runs_files(reference, answering_model, tmp_path):
    reference_dir, _ = reference
    outputs, upstream, extra = STAGES["train"]
    run_dir = tmp_path / "shared" / "run"
    _copy_upstream(reference_dir, run_dir, upstream)
    cmd = command(run_dir, answering_model, "train", extra=extra)
    first = subprocess.Popen(cmd, cwd=REPO, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for_lock(first, run_dir / outputs[0])
    # The first is held still (alive, lock held) while the second runs: a second that starts slowly under load would
    # otherwise find the stage already finished and rightly do nothing.
    first.send_signal(signal.SIGSTOP)
    try:
        second = subprocess.run(cmd, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=1200)
    finally:
        first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=1200)
    assert first.returncode == 0, stderr.decode()[-3000:]
    assert second.returncode != 0
    assert f"{run_dir / 'round_1' / 'train'} is being written by the train stage of process {first.pid}" in (
        second.stderr)
    assert snapshot(run_dir / outputs[0], run_dir) == snapshot(reference_dir / outputs[0], reference_dir)
