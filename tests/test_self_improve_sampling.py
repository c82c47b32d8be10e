"""The sample stage: shards, resume after SIGKILL byte-identical, damaged shards, config mismatch, bad pools."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from lsi.self_improve.sampling import (
    SampleStageConfig,
    read_samples,
    read_shard,
    run_sample_stage,
    shard_ranges,
)
from lsi.records import SampleRecord
from lsi.tasks.base import Example
from tests.helpers.run_sample_stage import CONFIG
from tests.helpers.run_sample_stage import main as run_stage_main
from lsi.batch_decoding import LoadedModel
from tests.helpers.toy import tiny_model, toy_task

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run_stage_process(output_dir):
    return subprocess.Popen([sys.executable, "-m", "tests.helpers.run_sample_stage", str(output_dir)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stage_files(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())
            if p.name.startswith("samples-") or p.name == "sampling_config.json"}


def test_sigkill_then_restart_gives_byte_identical_files(tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    run_stage_main(str(uninterrupted))  # in this process: same flags and mesh as the subprocesses
    killed = tmp_path / "killed"
    process = _run_stage_process(killed)
    deadline = time.time() + 600
    while time.time() < deadline and not any(killed.glob("samples-*.jsonl")):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # mid-run: at least one shard done, others not
    process.wait()
    done_before_restart = len(list(killed.glob("samples-*.jsonl")))
    assert 1 <= done_before_restart <= CONFIG.num_shards
    process = _run_stage_process(killed)
    assert process.wait(timeout=600) == 0, process.stderr.read().decode()
    assert _stage_files(killed) == _stage_files(uninterrupted)
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["counts"] == json.loads((uninterrupted / "manifest.json").read_text())["counts"]
    assert manifest["last_run"]["shards_skipped_complete"] == done_before_restart
    assert manifest["outputs"] == json.loads((uninterrupted / "manifest.json").read_text())["outputs"]


@pytest.fixture(scope="module")
def model():
    return LoadedModel(*tiny_model())


def _config(**changes):
    base = dict(num_samples=3, max_new_tokens=6, num_shards=3, batch_size=4, seed=1)
    base.update(changes)
    return SampleStageConfig(**base)


def test_shards_hold_every_question_and_sample_without_gold(model, tmp_path):
    manifest = run_sample_stage(toy_task(num_pool=7), model, _config(), tmp_path,
                                progress=False)
    records = read_samples(tmp_path)
    assert len(records) == 7 * 3 and manifest["counts"]["samples_expected"] == 21
    assert [r.question_id for r in records[::3]] == [f"p{i}" for i in range(7)]
    lines = [json.loads(line) for path in sorted(tmp_path.glob("samples-*.jsonl")) for line in path.open()]
    assert [SampleRecord.from_json(line, "") for line in lines] == records
    assert not any("gold" in line for line in lines)
    assert [len(read_shard(p)) for p in sorted(tmp_path.glob("samples-*.jsonl"))] == [9, 6, 6]
    assert shard_ranges(7, 3) == [(0, 3), (3, 5), (5, 7)]


def test_processes_split_shards_and_together_equal_one_process(model, tmp_path):
    task = toy_task(num_pool=5)
    run_sample_stage(task, model, _config(), tmp_path / "one", progress=False)
    for p in range(2):
        run_sample_stage(task, model, _config(), tmp_path / "two", process_index=p,
                         process_count=2, progress=False)
    assert _stage_files(tmp_path / "one") == _stage_files(tmp_path / "two")


def test_truncated_shard_from_a_crash_is_moved_aside_and_resampled(model, tmp_path):
    task = toy_task(num_pool=4)
    run_sample_stage(task, model, _config(num_shards=2), tmp_path, progress=False)
    shard = sorted(tmp_path.glob("samples-*.jsonl"))[0]
    good = shard.read_bytes()
    shard.write_bytes(good[: len(good) - 20])  # an older version crashed mid-line
    with pytest.raises(ValueError, match=r"samples-00000-of-00002.jsonl:6: truncated last line"):
        read_shard(shard)
    run_sample_stage(task, model, _config(num_shards=2), tmp_path, progress=False)
    assert shard.read_bytes() == good
    assert shard.with_name(shard.name + ".corrupt").exists()


def test_restart_with_a_different_m_is_an_error(model, tmp_path):
    task = toy_task(num_pool=2)
    run_sample_stage(task, model, _config(num_shards=1), tmp_path, progress=False)
    with pytest.raises(ValueError, match="num_samples: shards have 3, config says 5"):
        run_sample_stage(task, model, _config(num_shards=1, num_samples=5), tmp_path,
                         progress=False)


def test_bad_pools_are_errors(model, tmp_path):
    duplicate = toy_task()
    duplicate.load_pool = lambda: [Example("a", "q1"), Example("a", "q2")]
    with pytest.raises(ValueError, match="example id 'a' appears at records 0 and 1"):
        run_sample_stage(duplicate, model, _config(), tmp_path, progress=False)
    empty = toy_task()
    empty.load_pool = lambda: [Example("a", "q1"), Example("b", "  ")]
    with pytest.raises(ValueError, match="example 'b' .* has an empty question"):
        run_sample_stage(empty, model, _config(), tmp_path, progress=False)
