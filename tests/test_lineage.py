"""Stage lineage and the stage lock: a rerun keeps identical work, refuses changed work naming the change, replaces it
as a set when asked, and refuses upstream outputs that changed after their stage wrote them."""

import json
import os
import socket
import subprocess
import sys

import pytest

from lsi.lineage import Lineage, LineageError, claim, read_lineage, remove_temporary_files, upstream_fingerprint
from lsi.self_improve.formats import FormatStageConfig
from lsi.self_improve.voting import VoteStageConfig
from lsi.stage_lineage import PIPELINE, Restart, format_lineage, guarded, seal, vote_lineage
from lsi.stage_lock import StageLockedError, lock_path, stage_lock
from lsi.tasks.base import Example, Task
from lsi.tasks.prompt_style import Prompter
from lsi.vocab import load_vocabulary
from tests.helpers.runs import REPO
from tests.helpers.toy import toy_task
from tests.test_self_improve_data import _write_samples


def _lineage(**config):
    return Lineage("vote", {"min_vote_share": 0.0, **config}, {"samples": "abc"})


def test_claim_keeps_same_lineage_and_names_what_changed(tmp_path):
    directory = tmp_path / "votes"
    assert claim(directory, _lineage()) == "new"
    (directory / "pseudo_labels.jsonl").write_text("{}\n")
    (directory / ".pseudo_labels.jsonl.x1.tmp").write_text("half")  # a killed atomic write
    assert claim(directory, _lineage()) == "same"
    assert (directory / "pseudo_labels.jsonl").exists() and not (directory / ".pseudo_labels.jsonl.x1.tmp").exists()
    with pytest.raises(LineageError, match=r"another config or other inputs:\n  config.min_vote_share: 0.0 -> 0.5\n"
                                           r"Keeping both would mix them. Rerun with --restart_stage=vote"):
        claim(directory, _lineage(min_vote_share=0.5))
    assert claim(directory, _lineage(min_vote_share=0.5), replace_changed=True) == "new"
    assert not (directory / "pseudo_labels.jsonl").exists()
    assert read_lineage(directory)["config"]["min_vote_share"] == 0.5
    assert read_lineage(directory)["code"]["lsi"] is not None
    (directory / "pseudo_labels.jsonl").write_text("{}\n")
    assert claim(directory, _lineage(min_vote_share=0.5), restart=True) == "new"  # restart clears the same lineage
    assert sorted(p.name for p in directory.iterdir()) == ["lineage.json"]


def test_files_without_a_lineage_are_refused(tmp_path):
    (tmp_path / "votes").mkdir()
    (tmp_path / "votes" / "pseudo_labels.jsonl").write_text("{}\n")
    with pytest.raises(LineageError, match="holds files but no lineage.json"):
        claim(tmp_path / "votes", _lineage())


def test_restart_replaces_the_stage_and_the_changed_stages_after_it():
    restart = Restart("vote")
    assert restart.force("vote") and not restart.force("format")
    assert [s for s in PIPELINE if restart.replace_changed(s)] == ["format", "train", "eval"]
    assert not Restart().force("vote") and not Restart().replace_changed("eval")


def test_upstream_outputs_are_checked_against_their_manifest(tmp_path):
    _write_samples(tmp_path / "samples")
    task = toy_task(num_pool=3)
    with pytest.raises(LineageError, match="samples has no manifest.json: the sample stage has not completed"):
        vote_lineage(task, tmp_path / "samples", VoteStageConfig())
    seal(tmp_path / "samples", ["samples-00000-of-00002.jsonl", "samples-00001-of-00002.jsonl"])
    first = vote_lineage(task, tmp_path / "samples", VoteStageConfig())
    assert first == vote_lineage(task, tmp_path / "samples", VoteStageConfig())
    shard = tmp_path / "samples" / "samples-00000-of-00002.jsonl"
    shard.write_text("".join(shard.read_text().splitlines(keepends=True)[1:]))  # a deleted sample line
    with pytest.raises(LineageError, match="samples-00000-of-00002.jsonl changed after the sample stage wrote it"):
        vote_lineage(task, tmp_path / "samples", VoteStageConfig())
    shard.unlink()
    with pytest.raises(LineageError, match="samples-00000-of-00002.jsonl, an output of the sample stage, is missing"):
        upstream_fingerprint(tmp_path / "samples", "sample")


def test_vote_refuses_a_pool_edited_after_sampling(tmp_path):
    _write_samples(tmp_path / "samples")
    task = toy_task(num_pool=3)
    (tmp_path / "samples" / "lineage.json").write_text(json.dumps({"inputs": {"pool": "sha of the sampled pool"}}))
    seal(tmp_path / "samples", ["samples-00000-of-00002.jsonl"])
    with pytest.raises(LineageError, match="pool of task toy_sums changed after .*samples was sampled from it"):
        vote_lineage(task, tmp_path / "samples", VoteStageConfig())


def test_format_lineage_changes_with_exemplars_and_style(tmp_path):
    (tmp_path / "votes").mkdir()
    (tmp_path / "votes" / "pseudo_labels.jsonl").write_text("")
    seal(tmp_path / "votes", ["pseudo_labels.jsonl"])
    task = toy_task(num_pool=3)
    vocab = load_vocabulary("smollm2-135m-instruct")
    plain = format_lineage(task, tmp_path / "votes", Prompter.for_vocabulary(vocab, "plain"), FormatStageConfig())
    chat = format_lineage(task, tmp_path / "votes", Prompter.for_vocabulary(vocab, "chat"), FormatStageConfig())
    assert [line.split(":")[0] for line in chat.changes(plain.as_dict())] == ["inputs.prompt_style"]
    other = Task(task.name, task.answer_type, task.load_pool, task.load_eval,
                 {"default": type(task.exemplar_sets["default"])("x", (task.exemplar_sets["default"].exemplars[0],))})
    changed = format_lineage(other, tmp_path / "votes", Prompter.for_vocabulary(vocab, "plain"), FormatStageConfig())
    assert [line.split(":")[0] for line in changed.changes(plain.as_dict())] == ["inputs.exemplars"]
    shards = format_lineage(task, tmp_path / "votes", Prompter.for_vocabulary(vocab, "plain"), FormatStageConfig(
        num_shards=2))
    assert shards.changes(plain.as_dict()) == ["config.num_shards: 4 -> 2"]


def test_temporary_files_of_killed_writers_are_found_at_any_depth(tmp_path):
    (tmp_path / "cot_greedy").mkdir()
    (tmp_path / "cot_greedy" / ".predictions.jsonl.abc.tmp").write_text("half")
    (tmp_path / "checkpoints" / "6.orbax-checkpoint-tmp-123").mkdir(parents=True)
    (tmp_path / "metrics.json").write_text("{}")
    assert {p.name for p in remove_temporary_files(tmp_path)} == {".predictions.jsonl.abc.tmp",
                                                                   "6.orbax-checkpoint-tmp-123"}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["checkpoints", "cot_greedy", "metrics.json"]


def test_a_held_lock_names_its_holder_and_a_dead_holders_lock_is_taken_over(tmp_path):
    directory = tmp_path / "round_1" / "train"
    with stage_lock(directory, "train") as path:
        holder = json.loads(path.read_text())
        assert holder["host"] == socket.gethostname() and holder["pid"] == os.getpid()
        with pytest.raises(StageLockedError, match=rf"train is being written by the train stage of process "
                                                   rf"{os.getpid()} on this host"):
            with stage_lock(directory, "train"):
                pass
    assert not lock_path(directory).exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_path(directory).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "stage": "x"}))
    with stage_lock(directory, "train"):  # the holder is gone: stale, taken over
        assert json.loads(lock_path(directory).read_text())["pid"] == os.getpid()
    lock_path(directory).write_text(json.dumps({"host": "another-host", "pid": 1, "stage": "train"}))
    with pytest.raises(StageLockedError, match="on host another-host .*remove .*.train.lock"):
        with stage_lock(directory, "train"):
            pass


def test_a_lock_is_never_seen_without_its_holder(tmp_path):
    """Another process takes and releases the lock in a loop; every read of the lock file finds the holder's whole
    record. A lock that could be seen empty would read as stale, and a second writer would take it over."""
    directory = tmp_path / "round_1" / "train"
    loop = ("import sys; from lsi.stage_lock import stage_lock\n"
            "for _ in range(3000):\n"
            "    with stage_lock(sys.argv[1], 'train'): pass\n")
    writer = subprocess.Popen([sys.executable, "-c", loop, str(directory)], cwd=REPO)
    seen = 0
    while writer.poll() is None:
        try:
            text = lock_path(directory).read_text()
        except FileNotFoundError:
            continue
        assert json.loads(text)["pid"] == writer.pid, f"a lock file without its whole holder: {text!r}"
        seen += 1
    assert writer.returncode == 0 and seen > 0
    assert not list(directory.parent.iterdir())  # neither the lock nor its private copy is left


def test_guarded_claims_under_the_lock(tmp_path):
    with guarded(tmp_path / "votes", _lineage()) as state:
        assert state == "new" and lock_path(tmp_path / "votes").exists()
    assert not lock_path(tmp_path / "votes").exists()
    with guarded(tmp_path / "votes", _lineage()) as state:
        assert state == "same"
    with pytest.raises(LineageError):
        with guarded(tmp_path / "votes", _lineage(min_vote_share=0.3)):
            pass
    assert not lock_path(tmp_path / "votes").exists()  # released on error too


def test_question_fingerprints_see_edits():
    from lsi.lineage import fingerprint_examples

    questions = [Example("a", "What is 1 + 1?", "2"), Example("b", "What is 2 + 2?", "4")]
    edited = [questions[0], Example("b", "What is 2 + 3?", "4")]
    assert fingerprint_examples(questions) == fingerprint_examples(list(questions))
    assert fingerprint_examples(questions) != fingerprint_examples(edited)
