"""The lm-eval export of a real (tiny-model) eval folder: valid against lm-eval's own results schema, with the
metrics of metrics.json, and the provenance block beside them."""

import json
import subprocess

import jax
import pydantic
import pytest
from lm_eval.result_schema import EvalResults

from lsi import lm_eval_export
from lsi.batch_decoding import LoadedModel
from lsi.decoding import TransformerLM
from lsi.eval_summaries import write_eval_summaries
from lsi.evaluation import EvalConfig, evaluate, load_predictions, prompt_hash
from lsi.models import get_config, init_params
from lsi.provenance import provenance
from lsi.run_layout import RunLayout
from lsi.tasks.base import PROMPTS_DIR, Example, ExemplarSet, Task
from lsi.tasks.prompt_style import Prompter
from lsi.vocab import load_vocabulary
from tests.helpers.runs import REPO

EXAMPLES = [Example(f"q{i}", f"What is {i} + {i + 1}?", str(2 * i + 1)) for i in range(5)]


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    """run/eval/base/toy_sums/ of a tiny random model, with its provenance."""
    cfg = get_config("tiny", vocab_size=49152, max_length=1024)
    vocab = load_vocabulary("smollm2-135m-instruct")
    task = Task("toy_sums", "number", load_pool=lambda: [], load_eval=lambda: list(EXAMPLES),
                exemplar_sets={"default": ExemplarSet.from_file(PROMPTS_DIR / "gsm8k.json")})
    run_dir = tmp_path_factory.mktemp("run")
    prompter = Prompter.for_vocabulary(vocab, "plain")
    config = EvalConfig(modes=("cot_greedy", "self_consistency", "zero_shot_cot"), num_samples=4, max_new_tokens=6,
                        subsample_sizes=(1, 2, 4), subsample_repeats=3, batch_size=4, limit=4)
    model = LoadedModel(TransformerLM(cfg), init_params(cfg, jax.random.PRNGKey(0)), vocab, cfg.max_length)
    evaluate(task, model, config, run_dir / "eval" / "base" / "toy_sums", progress=False, prompter=prompter,
             provenance=provenance("smollm2-135m-instruct", prompter, gin_config="# the test's config\n"))
    return run_dir


def test_export_is_valid_lm_eval_results_with_the_evals_metrics(eval_dir):
    path = lm_eval_export.export(eval_dir, "base")
    exported = json.loads(path.read_text())
    pydantic.TypeAdapter(EvalResults).validate_python(exported, strict=True)
    metrics = json.loads((eval_dir / "eval" / "base" / "toy_sums" / "metrics.json").read_text())
    assert set(exported["results"]) == {"lsi_toy_sums_cot_greedy", "lsi_toy_sums_self_consistency",
                                        "lsi_toy_sums_zero_shot_cot"}
    greedy, sc = exported["results"]["lsi_toy_sums_cot_greedy"], exported["results"]["lsi_toy_sums_self_consistency"]
    assert greedy["exact_match,greedy"] == metrics["modes"]["cot_greedy"]["accuracy"]["value"]
    assert sc["exact_match,maj@4"] == metrics["modes"]["self_consistency"]["accuracy"]["value"]
    assert sc["exact_match,maj@2"] == metrics["modes"]["self_consistency"]["accuracy_at_m"]["2"]["accuracy"]
    assert exported["n-shot"] == {"lsi_toy_sums_cot_greedy": 8, "lsi_toy_sums_self_consistency": 8,
                                  "lsi_toy_sums_zero_shot_cot": 0}
    assert exported["n-samples"]["lsi_toy_sums_cot_greedy"] == {"original": 5, "effective": 4}
    assert exported["config"]["model_sha"] == metrics["provenance"]["model"]["fingerprint"]
    assert exported["model_name"] == "smollm2-135m-instruct"
    with pytest.raises(pydantic.ValidationError):  # the schema check is a real one
        pydantic.TypeAdapter(EvalResults).validate_python({**exported, "n-shot": {"x": "8"}}, strict=True)


def test_metrics_and_predictions_carry_provenance_and_prompts(eval_dir):
    directory = eval_dir / "eval" / "base" / "toy_sums"
    origin = json.loads((directory / "metrics.json").read_text())["provenance"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert origin["code"]["git_commit"] == head and isinstance(origin["code"]["git_dirty"], bool)
    assert origin["model"]["path"].endswith(".gguf") and len(origin["model"]["fingerprint"]) == 64
    assert origin["prompt_style"]["prompt_style"] == "plain"
    assert origin["packages"]["jax"] == jax.__version__ and origin["host_count"] == 1
    assert origin["gin_config"] == "# the test's config\n"
    for mode in ("cot_greedy", "zero_shot_cot"):
        for record in load_predictions(directory / mode / "predictions.jsonl"):
            question = next(e.question for e in EXAMPLES if e.id == record.id)
            assert question in record.prompt and record.prompt_hash == prompt_hash(record.prompt)


def test_eval_metrics_reach_tensorboard_at_their_round(eval_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    layout = RunLayout(eval_dir)
    metrics = {"toy_sums": json.loads((eval_dir / "eval" / "base" / "toy_sums" / "metrics.json").read_text())}
    later = json.loads(json.dumps(metrics))
    later["toy_sums"]["modes"]["cot_greedy"]["accuracy"]["value"] = 0.75  # as if round 2's model scored it
    write_eval_summaries(layout, "base", metrics)
    write_eval_summaries(layout, "round_2", later)
    write_eval_summaries(layout, "round_1_t1.5", later)
    events = EventAccumulator(str(eval_dir / "eval" / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    curve = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
             for e in events.Tensors("toy_sums/cot_greedy/accuracy")]
    assert curve == [(0, metrics["toy_sums"]["modes"]["cot_greedy"]["accuracy"]["value"]), (2, 0.75)]
    assert "toy_sums/self_consistency/accuracy_at_m/2" in events.Tags()["tensors"]
    variant = EventAccumulator(str(eval_dir / "eval" / "round_1_t1.5" / "tensorboard")).Reload()
    assert "toy_sums/zero_shot_cot/accuracy" in variant.Tags()["tensors"]
