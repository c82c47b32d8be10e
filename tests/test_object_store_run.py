"""A run folder on an object store: sample -> vote -> format -> train -> eval of a tiny model with
run_dir = gs://..., served offline by `helpers.object_store.fake_gcs`.

What this proves: every file lsi itself reads or writes for these stages goes through `etils.epath` and its gfile
backend (the production one for gs://) under GCS's rules (no append; no rename that the writes depend on), never
through pathlib, os or open(): a path that bypassed epath would land in a local folder called "gs:" under the working
directory, which the test checks is never created, and the store would not have the file the next stage reads.
It also proves that the previous stage's model is read back from the store (the eval of the trained model loads it
from gs:// through a local copy).

What it cannot prove: anything about real GCS (latency, retries, credentials, consistency) or about the three
readers and writers that take gs:// paths without epath, which in production speak GCS themselves and here are given
the folder behind the store instead (`route_native_io`): TensorFlow's TFRecord reader of the format shards (SeqIO),
tensorstore under Orbax (checkpoints), and TensorBoard's summary writer (clu). They are tested on local disk only.
"""

import json
import os

import gin
import pytest
from helpers.object_store import fake_gcs
from helpers.toy import save_tiny_checkpoint, tiny_stage_bindings

from lsi import main as lsi_main
from lsi.main import Experiment, parse_gin, run_stage
from lsi.stage_lineage import seal
from lsi.training import trainer

RUN_DIR = "gs://lsi-test-bucket/runs/tiny"


@pytest.fixture(autouse=True)
def clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def route_native_io(store, monkeypatch):
    """The gs:// consumers outside epath get the store's folder: they would otherwise call the real GCS."""
    from clu import metric_writers

    register, checkpointer, writer = (lsi_main.register_formatted_task, trainer.Checkpointer,
                                      metric_writers.create_default_writer)
    monkeypatch.setattr(lsi_main, "register_formatted_task",
                        lambda name, directory, *a, **k: register(name, store.local_path(directory), *a, **k))
    monkeypatch.setattr(trainer, "Checkpointer",
                        lambda directory, **k: checkpointer(store.local_path(directory), **k))
    monkeypatch.setattr(metric_writers, "create_default_writer",
                        lambda logdir, **k: writer(store.local_path(logdir), **k))


def _bindings(model) -> list[str]:
    return [*tiny_stage_bindings(RUN_DIR, model), "lsi.TrainConfig.log_every = 1"]


def _hand_labels(votes_dir) -> None:
    """A random model answers nothing parseable, so the vote keeps nothing: two labels written into the store by hand
    (and sealed as the vote's output) feed the format and train stages."""
    labels = [{"question_id": f"x{i}", "question": f"What is {i} + 1?", "answer": str(i + 1), "vote_count": 2,
               "num_parsed": 2, "num_samples": 3, "vote_share": 2 / 3, "vote_share_of_parsed": 1.0, "tie": False,
               "paths": [{"sample_index": 0, "text": f" {i} + 1 = {i + 1}. The answer is {i + 1}."}]}
              for i in range(2)]
    (votes_dir / "pseudo_labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    seal(votes_dir, ["pseudo_labels.jsonl"])


def test_stages_run_with_the_run_folder_on_an_object_store(tmp_path, monkeypatch):
    model = save_tiny_checkpoint(tmp_path / "tiny_model")
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # where pathlib.Path("gs://b/x") would write: "gs:/b/x"
    with fake_gcs(tmp_path / "store") as store:
        route_native_io(store, monkeypatch)
        parse_gin([], _bindings(model))
        experiment = Experiment()
        layout = experiment.layout
        assert str(layout.root) == RUN_DIR
        assert run_stage(experiment, "sample")["arithmetic"]["counts"]["samples_expected"] == 12
        assert run_stage(experiment, "vote")["arithmetic"]["counts"]["questions"] == 4
        _hand_labels(layout.stage_dir(1, "arithmetic", "votes"))
        formats = run_stage(experiment, "format")["arithmetic"]
        assert formats["counts"]["examples"] == 4 * formats["counts"]["kept_paths"] == 8
        trained = run_stage(experiment, "train")
        assert trained["steps"] == 2 and trained["hf_directory"] == f"{RUN_DIR}/round_1/train/hf"
        after = run_stage(experiment, "eval", eval_model="trained")["arithmetic"]
        assert after["modes"]["cot_greedy"]["accuracy"]["n"] == 3

        samples = sorted(p.name for p in layout.stage_dir(1, "arithmetic", "samples").glob("samples-*"))
        assert samples == ["samples-00000-of-00002.jsonl", "samples-00001-of-00002.jsonl"]
        assert (layout.trained_model(1) / "config.json").exists()
        assert json.loads((layout.train_dir(1) / "manifest.json").read_text())["lineage"]["stage"] == "train"
        metrics = (layout.train_dir(1) / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in metrics] == [1, 2]
        assert layout.predictions("round_1", "arithmetic", "self_consistency").exists()
        assert store.renames == []  # no write relied on a rename, which GCS does as copy + delete

    backing = tmp_path / "store" / "lsi-test-bucket" / "runs" / "tiny"
    assert (backing / "round_1" / "arithmetic" / "formats" / "manifest.json").is_file()
    assert (backing / "round_1" / "train" / "checkpoints").is_dir()  # tensorstore's files, in the routed folder
    assert not list(backing.rglob("*.lock")) and not list(backing.rglob("*.tmp"))  # locks released, no temporaries
    assert not any(name.startswith("gs:") for _, dirs, _ in os.walk(tmp_path) for name in dirs), \
        "a stage wrote a gs:// path through pathlib/os instead of epath"
