"""Typed stage records: JSON round trips keep the bytes, and a bad line names its file, line and field."""

import dataclasses
import json

import pytest

from lsi.records import (
    KeptPath,
    Prediction,
    PredictionSample,
    PseudoLabel,
    Record,
    SampleRecord,
    read_records,
    write_records,
)
from lsi.run_layout import RunLayout, round_tag, stage_round, tag_stage

SAMPLE = SampleRecord(question_id="p0", prompt_format="few_shot_cot", exemplar_set="default", sample_index=2,
                      text="3 + 4 = 7. The answer is 7.", answer="7", finish_reason="stop", num_tokens=12,
                      sum_log_prob=-3.25)
LABEL = PseudoLabel(question_id="p0", question="What is 3 + 4?", answer="7", vote_count=2, num_parsed=3,
                    num_samples=4, vote_share=0.5, vote_share_of_parsed=2 / 3, tie=False,
                    paths=(KeptPath(0, "3 + 4 = 7."), KeptPath(2, "Seven: 7.")))
PREDICTION = Prediction(id="e1", prompt_hash="ab12", samples=(
    PredictionSample("The answer is 7.", "7", "stop", 5, -1.5), PredictionSample("Hmm", None, "length", 9, -7.0)),
    vote="7", vote_count=1, vote_share=0.5, vote_share_of_parsed=1.0, tie=False, gold="7",
    gold_alternatives=("seven",), correct=True)


@pytest.mark.parametrize("record", [SAMPLE, LABEL, PREDICTION], ids=lambda r: type(r).__name__)
def test_round_trip_keeps_the_record_and_the_bytes(record, tmp_path):
    path = write_records(tmp_path / "records.jsonl", [record, record])
    back = read_records(type(record), path)
    assert back == [record, record]
    write_records(tmp_path / "again.jsonl", back)
    assert (tmp_path / "again.jsonl").read_bytes() == path.read_bytes()
    # The JSON keys are the fields in declaration order: the layout the stages always wrote.
    assert list(json.loads(path.read_text().splitlines()[0])) == [f.name for f in dataclasses.fields(record)]


def test_pinned_line_layout():
    assert LABEL.to_line() == (
        '{"question_id": "p0", "question": "What is 3 + 4?", "answer": "7", "vote_count": 2, "num_parsed": 3, '
        '"num_samples": 4, "vote_share": 0.5, "vote_share_of_parsed": 0.6666666666666666, "tie": false, '
        '"paths": [{"sample_index": 0, "text": "3 + 4 = 7."}, {"sample_index": 2, "text": "Seven: 7."}]}\n')


def _write_lines(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_a_bad_field_names_the_file_line_and_field(tmp_path):
    good = PREDICTION.to_json()
    path = _write_lines(tmp_path / "predictions.jsonl", [good, {**good, "correct": "yes"}])
    with pytest.raises(ValueError, match=r"predictions\.jsonl:2: field 'correct' is \"yes\" \(str\), not bool"):
        read_records(Prediction, path)
    missing = {k: v for k, v in good.items() if k != "vote"}
    with pytest.raises(ValueError, match=r"predictions\.jsonl:1: Prediction without field\(s\) vote"):
        read_records(Prediction, _write_lines(path, [missing]))
    nested = {**good, "samples": [good["samples"][0], {**good["samples"][1], "num_tokens": 2.5}]}
    with pytest.raises(ValueError, match=r":1: samples\[1\]: field 'num_tokens' is 2\.5 \(float\), not int"):
        read_records(Prediction, _write_lines(path, [nested]))
    with pytest.raises(ValueError, match=r":1: field 'samples' is a dict, not a list"):
        read_records(Prediction, _write_lines(path, [{**good, "samples": {}}]))
    # JSON true is not a count; an integer is a valid float; null only where a field may be None.
    with pytest.raises(ValueError, match=r"field 'sample_index' is true \(bool\), not int"):
        SampleRecord.from_json({**SAMPLE.to_json(), "sample_index": True}, "x")
    assert SampleRecord.from_json({**SAMPLE.to_json(), "sum_log_prob": -3}, "x").sum_log_prob == -3
    assert SampleRecord.from_json({**SAMPLE.to_json(), "answer": None}, "x").answer is None
    with pytest.raises(ValueError, match=r"field 'text' is null \(NoneType\), not str"):
        SampleRecord.from_json({**SAMPLE.to_json(), "text": None}, "x")


@dataclasses.dataclass(frozen=True)
class _Extended(Record):
    name: str
    added_later: int = 0


def test_records_read_files_of_other_versions():
    # A key a later version adds is ignored; a field added with a default reads from files written before it.
    assert SampleRecord.from_json({**SAMPLE.to_json(), "new_field": 1}, "x") == SAMPLE
    assert _Extended.from_json({"name": "a"}, "x") == _Extended("a", 0)
    with pytest.raises(ValueError, match="x: _Extended without field\\(s\\) name"):
        _Extended.from_json({"added_later": 2}, "x")


def test_run_layout_names_every_stage_path(tmp_path):
    layout = RunLayout(tmp_path)
    assert layout.stage_dir(2, "gsm8k", "votes") == tmp_path / "round_2" / "gsm8k" / "votes"
    assert layout.pseudo_labels(1, "gsm8k") == tmp_path / "round_1" / "gsm8k" / "votes" / "pseudo_labels.jsonl"
    assert layout.trained_model(1) == tmp_path / "round_1" / "train" / "hf"
    assert layout.predictions("base", "gsm8k", "cot_greedy") == (
        tmp_path / "eval" / "base" / "gsm8k" / "cot_greedy" / "predictions.jsonl")
    with pytest.raises(ValueError, match="Rounds count from 1"):
        layout.round_dir(0)
    with pytest.raises(ValueError, match="data stage is one of"):
        layout.stage_dir(1, "gsm8k", "train")
    for r, task in ((2, "b"), (1, "a"), (10, "a")):
        layout.stage_dir(r, task, "samples").mkdir(parents=True)
    layout.train_dir(1).mkdir()
    (tmp_path / "round_x").mkdir()
    assert layout.rounds() == [1, 2, 10] and layout.round_tasks(1) == ["a"]
    assert [round_tag(r) for r in (0, 3)] == ["base", "round_3"]
    assert tag_stage("round_1_t1.5") == "round_1" and stage_round("round_1_t1.5") is None
    assert stage_round("round_12") == 12 and stage_round("base") == 0 and stage_round("other") is None
