"""Vote and format stages on hand-made sample shards: pseudo labels, the four formats, SeqIO read-back."""

import dataclasses
import hashlib
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from lsi.io_utils import write_json_atomic, write_jsonl_atomic
from lsi.self_improve.formats import (
    FormatStageConfig,
    register_formatted_task,
    register_mixture,
    run_format_stage,
    training_examples,
)
from lsi.self_improve.sampling import SampleStageConfig, shard_path
from lsi.self_improve.voting import VoteStageConfig, read_pseudo_labels, run_vote_stage
from lsi.tasks.answers import parse_answer
from tests.helpers.toy import toy_task

REPO = pathlib.Path(__file__).resolve().parents[1]

# Per question: sampled texts. p0 agrees 3/4 on 0; p1 has no parseable answer; p2 ties 1 vs 1 (first seen wins).
TEXTS = {
    "p0": [" 0 + 0 = 0. The answer is 0.", " Zero plus zero is 0. The answer is 0.", " The answer is 5.",
           " 0 + 0 = 0. The answer is 0."],
    "p1": [" I do not know.", " Hmm.", " ...", " No idea."],
    "p2": [" 2 + 4 = 6. The answer is 6.", " 2 + 4 = 7. The answer is 7.", " Unclear.", " Not sure."],
}


def _write_samples(directory, texts=TEXTS):
    config = SampleStageConfig(num_samples=4, num_shards=2)
    ids = list(texts)
    write_json_atomic(directory / "sampling_config.json",
                      {**dataclasses.asdict(config), "task": "toy_sums", "max_questions": len(ids)})
    ranges = [(0, 2), (2, 3)]
    for index, (begin, end) in enumerate(ranges):
        records = [
            {"question_id": qid, "prompt_format": "few_shot_cot", "exemplar_set": "gsm8k", "sample_index": j,
             "text": text, "answer": parse_answer(text, "number"), "finish_reason": "stop", "num_tokens": 9,
             "sum_log_prob": -3.0}
            for qid in ids[begin:end] for j, text in enumerate(texts[qid])
        ]
        write_jsonl_atomic(shard_path(directory, index, 2), records)


@pytest.fixture()
def voted(tmp_path):
    _write_samples(tmp_path / "samples")
    manifest = run_vote_stage(toy_task(num_pool=3), tmp_path / "samples", tmp_path / "votes")
    return tmp_path, manifest


def test_vote_stage_keeps_agreeing_paths_and_counts(voted):
    tmp_path, manifest = voted
    labels = {r.question_id: r for r in read_pseudo_labels(tmp_path / "votes" / "pseudo_labels.jsonl")}
    assert set(labels) == {"p0", "p2"}
    assert labels["p0"].answer == "0" and [p.sample_index for p in labels["p0"].paths] == [0, 1, 3]
    assert labels["p0"].vote_share == 0.75 and labels["p0"].vote_share_of_parsed == 0.75
    assert labels["p2"].answer == "6" and labels["p2"].tie
    assert labels["p0"].question == "What is 0 + 0?"
    counts = manifest["counts"]
    assert counts["questions"] == 3 and counts["no_parseable_answer"] == 1 and counts["tie"] == 1
    assert counts["kept_paths"] == 4 and counts["pseudo_labels"] == 2
    assert counts["mean_vote_share"] == pytest.approx((0.75 + 0.25) / 2)


def test_vote_options_threshold_dedupe_and_cap(tmp_path):
    _write_samples(tmp_path / "samples")
    task = toy_task(num_pool=3)
    manifest = run_vote_stage(task, tmp_path / "samples", tmp_path / "v1", VoteStageConfig(min_vote_share=0.5))
    assert manifest["counts"]["below_min_share"] == 1 and manifest["counts"]["pseudo_labels"] == 1
    manifest = run_vote_stage(task, tmp_path / "samples", tmp_path / "v2", VoteStageConfig(dedupe_paths=True))
    assert manifest["counts"]["deduped_paths"] == 1 and manifest["counts"]["kept_paths"] == 3
    manifest = run_vote_stage(task, tmp_path / "samples", tmp_path / "v3", VoteStageConfig(max_paths_per_question=1))
    assert manifest["counts"]["kept_paths"] == 2 and manifest["counts"]["capped_paths"] == 2
    with pytest.raises(ValueError, match="min_vote_share"):
        VoteStageConfig(min_vote_share=1.5)


def _kept(directory):
    return {r.question_id: (r.answer, [p.sample_index for p in r.paths])
            for r in read_pseudo_labels(directory / "pseudo_labels.jsonl")}


def test_oracle_controls_keep_right_or_wrong_paths_by_the_hidden_gold(tmp_path):
    # The toy pool's gold answers: p0 -> 0, p1 -> 3, p2 -> 6 (the samples never see them).
    _write_samples(tmp_path / "samples")
    task = toy_task(num_pool=3)
    run_vote_stage(task, tmp_path / "samples", tmp_path / "oracle", VoteStageConfig(label_source="oracle"))
    assert _kept(tmp_path / "oracle") == {"p0": ("0", [0, 1, 3]), "p2": ("6", [0])}
    manifest = run_vote_stage(task, tmp_path / "samples", tmp_path / "anti",
                              VoteStageConfig(label_source="anti_oracle"))
    assert _kept(tmp_path / "anti") == {"p0": ("5", [2]), "p2": ("7", [1])}
    assert manifest["config"]["label_source"] == "anti_oracle"
    with pytest.raises(ValueError, match="label_source must be one of"):
        VoteStageConfig(label_source="gold")


def test_total_path_cap_takes_paths_round_robin_across_questions(tmp_path):
    _write_samples(tmp_path / "samples")
    manifest = run_vote_stage(toy_task(num_pool=3), tmp_path / "samples", tmp_path / "votes",
                              VoteStageConfig(max_total_paths=3))
    assert _kept(tmp_path / "votes") == {"p0": ("0", [0, 1]), "p2": ("6", [0])}
    assert manifest["counts"]["kept_paths"] == 3 and manifest["counts"]["capped_paths"] == 1


def test_samples_from_another_task_are_an_error(tmp_path):
    _write_samples(tmp_path / "samples", {"zz": TEXTS["p0"], "p1": TEXTS["p1"], "p2": TEXTS["p2"]})
    with pytest.raises(ValueError, match="question 'zz', which is not in the pool"):
        run_vote_stage(toy_task(num_pool=3), tmp_path / "samples", tmp_path / "votes")


def test_a_vote_that_keeps_nothing_is_an_error_unless_allowed(tmp_path):
    task = toy_task(num_pool=3)
    _write_samples(tmp_path / "samples", {"p0": TEXTS["p1"], "p1": TEXTS["p1"], "p2": TEXTS["p1"]})
    with pytest.raises(ValueError, match=r"samples: the vote kept 0 pseudo-labels of 3 questions voted \(3 had no "
                                         r"parseable answer.*allow_empty"):
        run_vote_stage(task, tmp_path / "samples", tmp_path / "votes")
    assert not (tmp_path / "votes" / "pseudo_labels.jsonl").exists()
    manifest = run_vote_stage(task, tmp_path / "samples", tmp_path / "votes", VoteStageConfig(allow_empty=True))
    assert manifest["counts"]["pseudo_labels"] == 0 and manifest["config"]["allow_empty"]
    assert (tmp_path / "votes" / "pseudo_labels.jsonl").read_text() == ""
    _write_samples(tmp_path / "answered")  # answers exist, but no vote reaches the threshold
    with pytest.raises(ValueError, match=r"1 had no parseable answer.*; 2 were below min_vote_share=0\.9"):
        run_vote_stage(task, tmp_path / "answered", tmp_path / "v2", VoteStageConfig(min_vote_share=0.9))


def test_pseudo_label_without_a_field_names_file_line_and_field(voted):
    tmp_path, _ = voted
    labels = [json.loads(line) for line in (tmp_path / "votes" / "pseudo_labels.jsonl").read_text().splitlines()]
    del labels[1]["paths"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text("".join(json.dumps(r) + "\n" for r in labels))
    with pytest.raises(ValueError, match=r"broken\.jsonl:2: PseudoLabel without field\(s\) paths"):
        read_pseudo_labels(broken)
    labels[1]["paths"] = [{"sample_index": 0}]
    broken.write_text("".join(json.dumps(r) + "\n" for r in labels))
    with pytest.raises(ValueError, match=r"broken\.jsonl:2: paths\[0\]: KeptPath without field\(s\) text"):
        run_format_stage(toy_task(num_pool=3), broken, tmp_path / "formats")


def test_four_formats_match_table_2(voted):
    tmp_path, _ = voted
    manifest = run_format_stage(toy_task(num_pool=3), tmp_path / "votes" / "pseudo_labels.jsonl",
                                tmp_path / "formats", FormatStageConfig(num_shards=3))
    assert manifest["counts"]["examples"] == 4 * 4  # 4 kept paths x 4 formats
    assert manifest["counts"]["examples_per_format"] == {"few_shot_cot": 4, "few_shot_direct": 4,
                                                         "zero_shot_cot": 4, "zero_shot_direct": 4}
    assert sum(o["examples"] for o in manifest["outputs"].values()) == 16


def test_format_ablation_presets(voted):
    tmp_path, _ = voted
    task = toy_task(num_pool=3)
    labels = tmp_path / "votes" / "pseudo_labels.jsonl"
    assert run_format_stage(task, labels, tmp_path / "f1", FormatStageConfig("cot_free", 1))["counts"][
        "examples_per_format"] == {"few_shot_direct": 4, "zero_shot_direct": 4}
    assert run_format_stage(task, labels, tmp_path / "f2", FormatStageConfig("few_shot_cot_only", 1))["counts"][
        "examples"] == 4
    assert run_format_stage(task, labels, tmp_path / "f3", FormatStageConfig("zero_shot", 1))["counts"][
        "examples_per_format"] == {"zero_shot_cot": 4, "zero_shot_direct": 4}
    with pytest.raises(ValueError, match="Unknown format preset"):
        FormatStageConfig("everything").resolved_formats()


def test_tfrecords_read_back_through_seqio(voted):
    import seqio

    from lsi.vocab import load_vocabulary

    tmp_path, _ = voted
    task = toy_task(num_pool=3)
    manifest = run_format_stage(task, tmp_path / "votes" / "pseudo_labels.jsonl", tmp_path / "formats",
                                FormatStageConfig(num_shards=2))
    vocab = load_vocabulary("smollm2-135m-instruct")
    name = register_formatted_task("lsi_test_toy_formats", tmp_path / "formats", vocab)
    dataset = seqio.get_mixture_or_task(name).get_dataset(sequence_length=None, split="train", shuffle=False)
    rows = [(vocab.decode(list(ex["inputs"])), vocab.decode(list(ex["targets"]))) for ex in dataset.as_numpy_iterator()]
    assert len(rows) == manifest["counts"]["examples"]
    by_target = {}
    for inputs, targets in rows:
        by_target.setdefault(targets, []).append(inputs)
    # Zero-shot direct: "Q: <question>\nA:" -> " The answer is 0." (targets decode stops at EOS).
    assert "Q: What is 0 + 0?\nA:" in by_target[" The answer is 0."]
    assert "Q: What is 0 + 0?\nA: Let's think step by step." in by_target[" 0 + 0 = 0. The answer is 0."]
    few_shot = [i for i in by_target[" 0 + 0 = 0. The answer is 0."] if i.startswith("Q: A grove has 15 trees")]
    assert few_shot and few_shot[0].endswith("\n\nQ: What is 0 + 0?\nA:")
    mixture = register_mixture("lsi_test_toy_mixture", {name: tmp_path / "formats"})
    assert seqio.get_mixture_or_task(mixture).get_rate(seqio.get_mixture_or_task(name)) == 16.0
    assert json.loads((tmp_path / "formats" / "manifest.json").read_text())["config"]["num_shards"] == 2


def test_vote_share_weights_reach_the_training_examples(voted):
    """example_weight='vote_share': every example of a question carries its vote share through the TFRecords and
    SeqIO into packing; 'uniform' shards carry no weight feature (their bytes are what they were) and read as 1.0."""
    from lsi.training.data import load_seqio_examples, pack_examples
    from lsi.vocab import load_vocabulary

    tmp_path, _ = voted
    task, vocab = toy_task(num_pool=3), load_vocabulary("smollm2-135m-instruct")
    labels = tmp_path / "votes" / "pseudo_labels.jsonl"
    shares = {r.question_id: r.vote_share for r in read_pseudo_labels(labels)}
    weighted = run_format_stage(task, labels, tmp_path / "weighted", FormatStageConfig(num_shards=1,
                                                                                       example_weight="vote_share"))
    uniform = run_format_stage(task, labels, tmp_path / "uniform", FormatStageConfig(num_shards=1))
    assert weighted["config"]["example_weight"] == "vote_share" and uniform["config"]["example_weight"] == "uniform"
    read = {}
    for name in ("weighted", "uniform"):
        read[name] = load_seqio_examples(register_formatted_task(f"lsi_test_toy_{name}", tmp_path / name, vocab))
    expected = [shares[r["question_id"]] for r in training_examples(task, read_pseudo_labels(labels),
                                                                    FormatStageConfig().resolved_formats())]
    assert [e.weight for e in read["weighted"]] == pytest.approx(expected) and set(expected) == {0.75, 0.25}
    assert {e.weight for e in read["uniform"]} == {1.0}
    assert [list(e.targets) for e in read["weighted"]] == [list(e.targets) for e in read["uniform"]]
    assert b"weight" not in (tmp_path / "uniform" / "examples-00000-of-00001.tfrecord").read_bytes()
    packed = pack_examples(read["weighted"][:2], seq_length=1024)  # one row, two segments
    for segment, example in zip((1, 2), read["weighted"][:2]):
        in_segment = packed["segment_ids"][0] == segment
        np.testing.assert_array_equal(packed["loss_weights"][0][in_segment],
                                      np.where(packed["loss_mask"][0][in_segment] == 1, example.weight, 0.0))
    with pytest.raises(ValueError, match="example_weight must be one of"):
        FormatStageConfig(example_weight="share")


def test_fewer_shards_replace_the_old_set(voted):
    import seqio

    from lsi.vocab import load_vocabulary

    tmp_path, _ = voted
    task, labels = toy_task(num_pool=3), tmp_path / "votes" / "pseudo_labels.jsonl"
    run_format_stage(task, labels, tmp_path / "formats", FormatStageConfig(num_shards=3))
    (tmp_path / "formats" / ".examples-00002-of-00003.tfrecord.tmp").write_bytes(b"a killed write")
    manifest = run_format_stage(task, labels, tmp_path / "formats", FormatStageConfig(num_shards=2))
    on_disk = sorted(p.name for p in (tmp_path / "formats").glob("*examples-*"))
    assert on_disk == sorted(manifest["outputs"]) == ["examples-00000-of-00002.tfrecord",
                                                      "examples-00001-of-00002.tfrecord"]
    vocab = load_vocabulary("smollm2-135m-instruct")
    name = register_formatted_task("lsi_test_toy_reshard", tmp_path / "formats", vocab)
    dataset = seqio.get_mixture_or_task(name).get_dataset(sequence_length=None, split="train", shuffle=False)
    assert sum(1 for _ in dataset.as_numpy_iterator()) == manifest["counts"]["examples"] == 16


_FORMAT_IN_A_PROCESS = """
import sys
from lsi.self_improve.formats import FormatStageConfig, run_format_stage
from tests.helpers.toy import toy_task
run_format_stage(toy_task(num_pool=3), sys.argv[1], sys.argv[2], FormatStageConfig(num_shards=2))
"""


def test_shards_are_the_same_bytes_in_every_process(voted):
    tmp_path, _ = voted
    digests = []
    for seed, out in (("1", "a"), ("2", "b")):  # protobuf map order varies between processes unless fixed
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get(
            "PYTHONPATH", "")]), "TF_CPP_MIN_LOG_LEVEL": "3"}
        result = subprocess.run([sys.executable, "-c", _FORMAT_IN_A_PROCESS, str(tmp_path / "votes" /
                                 "pseudo_labels.jsonl"), str(tmp_path / out)], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in sorted((tmp_path / out).glob("examples-*.tfrecord"))})
    assert len(digests[0]) == 2 and digests[0] == digests[1]
