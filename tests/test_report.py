"""lsi.report on fake-but-schema-exact run folders (tests/helpers/fake_run.py): figures, tables, missing pieces,
malformed files."""

import json
import pathlib
import shutil

import pytest

from lsi import metrics, report
from tests.helpers.fake_run import BASE_ONLY, build_fake_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> pathlib.Path:
    """base + round_1 evals, a round_1 temperature sweep, one self-improvement round with training."""
    return build_fake_run(tmp_path_factory.mktemp("full") / "run")


@pytest.fixture(scope="module")
def full_report(full_run, tmp_path_factory) -> pathlib.Path:
    return report.write_report(full_run, tmp_path_factory.mktemp("report"))


def _accuracy_cell(run_dir: pathlib.Path, tag: str, mode: str) -> str:
    """What the report must show for a mode, straight from metrics.json."""
    value = json.loads((run_dir / "eval" / tag / "toy_sums" / "metrics.json").read_text())["modes"][mode]["accuracy"]
    return str(metrics.Estimate(**value))


def test_report_writes_valid_pngs(full_report):
    for name in report.PLOT_FILES:
        data = (full_report.parent / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 5000, name  # a real plot, not an empty canvas
        assert f"]({name})" in full_report.read_text()


def test_report_table_has_the_metrics_numbers(full_run, full_report):
    text = full_report.read_text()
    # Greedy modes: 3/10 and 6/10 (standard), 4/10 and 7/10 (CoT) correct by construction; Wilson intervals.
    assert "| Standard | w/o (base) | 30.0% [10.8, 60.3] (n=10) |" in text
    assert "| Standard | w/ (round_1) | 60.0% [31.3, 83.2] (n=10) |" in text
    assert "| CoT (greedy) | w/o (base) | 40.0% [16.8, 68.7] (n=10) |" in text
    assert "| CoT (greedy) | w/ (round_1) | 70.0% [39.7, 89.2] (n=10) |" in text
    for label, tag in (("w/o", "base"), ("w/", "round_1")):
        cell = _accuracy_cell(full_run, tag, "self_consistency")
        assert f"| Self-consistency | {label} ({tag}) | {cell} |" in text
    # The paired change of the greedy standard mode: questions 3-5 gained, none lost.
    assert "| toy_sums | standard | +30.0 points" in text and "+3/-0" in text


def test_report_sections_show_sweep_accuracy_at_m_and_counts(full_run, full_report):
    text = full_report.read_text()
    assert "| toy_sums | round_1 | 1.5 | round_1_t1.5 | " + _accuracy_cell(full_run, "round_1_t1.5",
                                                                        "self_consistency") in text
    sc = json.loads((full_run / "eval/base/toy_sums/metrics.json").read_text())["modes"]["self_consistency"]
    assert f"| toy_sums | base | 1 | {100 * sc['accuracy_at_m']['1']['accuracy']:.1f} |" in text
    votes = json.loads((full_run / "round_1/toy_sums/votes/manifest.json").read_text())["counts"]
    assert f"| 1 | toy_sums | {votes['questions']} | " in text
    assert f"| {votes['pseudo_labels']} | {votes['kept_paths']} | {votes['mean_vote_share']:.4g} |" in text
    assert "| 1 | 10 | 100 | " in text  # training: 10 logged steps, last step 100


def test_format_before_after_lists_each_mode_with_intervals(full_run):
    text = report.format_before_after(full_run)
    lines = text.splitlines()
    assert "before (base)" in lines[1] and "after (round_1)" in lines[1]
    table, changes = text.split("\n\n")
    standard = next(line for line in table.splitlines() if " standard " in line)
    assert "30.0% [10.8, 60.3] (n=10)" in standard and "60.0% [31.3, 83.2] (n=10)" in standard
    assert len([line for line in table.splitlines() if line.startswith("toy_sums")]) == 3
    # Then the paired change per mode, as the report computes it.
    assert changes.startswith("Change, after - before on the same questions: Newcombe 95% interval, McNemar exact p")
    expected = {mode: str(change) for _, mode, change in report.paired_changes(
        report.load_evals(full_run), "base", "round_1")}
    assert len(expected) == 3 and all(any(line.endswith(c) and f" {m} " in line for line in changes.splitlines())
                                      for m, c in expected.items())


def test_malformed_train_metrics_line_names_file_and_line(full_run, tmp_path):
    run = pathlib.Path(shutil.copytree(full_run, tmp_path / "run"))
    metrics_path = run / "round_1" / "train" / "metrics.jsonl"
    metrics_path.write_text(metrics_path.read_text() + '{"step": 110, "loss": \n')
    with pytest.raises(ValueError, match=r"round_1/train/metrics.jsonl:11: malformed JSON"):
        report.write_report(run)


def test_malformed_metrics_json_names_the_file(full_run, tmp_path):
    run = pathlib.Path(shutil.copytree(full_run, tmp_path / "run"))
    (run / "eval" / "round_1" / "toy_sums" / "metrics.json").write_text('{"task": "toy_sums", "modes": {')
    with pytest.raises(ValueError, match=r"eval/round_1/toy_sums/metrics.json: malformed JSON"):
        report.write_report(run)
    (run / "eval" / "round_1" / "toy_sums" / "metrics.json").write_text('{"task": "toy_sums"}')
    with pytest.raises(ValueError, match=r"metrics.json: no 'modes' object"):
        report.format_before_after(run)


def test_run_with_only_base_eval_still_reports(tmp_path):
    run = build_fake_run(tmp_path / "run", rounds=0, eval_specs=BASE_ONLY)
    path = report.write_report(run)
    text = path.read_text()
    assert "| Standard | w/o (base) | 30.0% [10.8, 60.3] (n=10) |" in text
    assert "| Standard | w/ (missing) | not evaluated |" in text
    assert "No `round_<r>` evaluation yet" in text
    assert "No temperature sweep in this run" in text
    assert "No training metrics yet" in text and "No pseudo-labels yet" in text
    assert "self-improvement has not started" in text
    assert (path.parent / "calibration.png").exists() and (path.parent / "accuracy_vs_m.png").exists()
    assert not (path.parent / "training_loss.png").exists()
    console = report.format_before_after(run)
    assert "after (no round eval)" in console and "not evaluated" in console


def test_trained_round_without_eval_is_named(tmp_path):
    run = build_fake_run(tmp_path / "run", rounds=1, eval_specs=BASE_ONLY)
    text = report.write_report(run).read_text()
    assert "round_1 is trained but not evaluated yet." in text
    assert (tmp_path / "run" / "report" / "training_loss.png").exists()


def test_empty_run_folder_reports_what_is_missing(tmp_path):
    text = report.write_report(tmp_path).read_text()
    assert "No evaluation yet" in text and "self-improvement has not started" in text
    assert report.format_before_after(tmp_path).startswith("No evaluation in")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        report.write_report(tmp_path / "absent")


def test_rerun_removes_figures_whose_data_is_gone(full_run, tmp_path):
    run = pathlib.Path(shutil.copytree(full_run, tmp_path / "run"))
    report.write_report(run)
    shutil.rmtree(run / "round_1" / "train")
    report.write_report(run)
    assert not (run / "report" / "training_loss.png").exists()
    assert "No training yet." in (run / "report" / "report.md").read_text()


def test_eval_folder_without_task_level_reads_task_from_metrics(full_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(full_run / "eval" / "base" / "toy_sums", run / "eval" / "base")
    evals = report.load_evals(run)
    assert [(e.tag, e.task) for e in evals] == [("base", "toy_sums")]


def test_tags_order_and_sweeps():
    def run(tag, temperature, value):
        estimate = metrics.accuracy([True] * value + [False] * (10 - value)).as_dict()
        return report.EvalRun(tag, "t", pathlib.Path(tag), {"config": {"temperature": temperature},
                                                            "modes": {"self_consistency": {"accuracy": estimate}}})

    evals = [run("round_10", 1.2, 5), run("base", 0.7, 3), run("round_9", 1.2, 4), run("round_10_t0.7", 0.7, 6),
             run("base_t0.7", 0.7, 2)]
    assert report.before_after_tags(evals) == ("base", "round_10")
    sweeps = report.temperature_sweeps(evals)
    assert list(sweeps["t"]) == ["round_10"]  # base's two tags share one temperature: no sweep
    assert [(t, tag) for t, _, tag in sweeps["t"]["round_10"]] == [(0.7, "round_10_t0.7"), (1.2, "round_10")]
    assert min(evals, key=lambda e: report._tag_order(e.tag)).tag == "base"


def test_cli_prints_the_report_path(full_run, tmp_path, capsys):
    assert report.main([str(full_run), "--output_dir", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(tmp_path / "out" / "report.md") and pathlib.Path(printed).exists()
