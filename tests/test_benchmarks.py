"""The benchmarks' own checks, on their tiny configs: the alternating timer the side-by-side benchmarks rely on, the
trainer's GEMM accounting, the sampler's prompts (built by lsi.tasks), and a smoke run of each benchmark (sampler,
trainer, decode paths, and their GPU variants run on the CPU).

The sampler benchmarks run as their own commands, as a user would run them; the result JSON must describe a run in
which both sides did the same work.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from benchmarks import common
from lsi.models import get_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(module: str, output: pathlib.Path, *args: str) -> dict:
    # The child inherits conftest's XLA_FLAGS (low LLVM optimisation: compile time dominates at this size).
    result = subprocess.run([sys.executable, "-m", module, "--config", "tiny", "--output", str(output), *args],
                            cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(output.read_text())


def test_sampler_benchmark_smoke(tmp_path):
    record = _run("benchmarks.sampler", tmp_path / "sampler.json", "--repeats", "1", "--warmup", "0",
                  "--sweep_samples", "1,3", "--sides", "ours,transformers_one_call,transformers_per_prompt")
    settings = record["settings"]
    assert (settings["num_prompts"], settings["num_samples"], settings["max_new_tokens"]) == (3, 4, 8)
    assert record["sampled_tokens_per_call"] == 3 * 4 * 8
    rates = record["tokens_per_s"]
    assert set(rates) == {"ours", "transformers_one_call", "transformers_per_prompt", "llama_cpp_f32",
                          "llama_cpp_q4_1"}
    assert all(rates[side] > 0 for side in ("ours", "transformers_one_call", "transformers_per_prompt"))
    assert rates["llama_cpp_f32"] is None  # not asked for (and llama_cpp is never an lsi dependency)
    faster = max(("transformers_one_call", "transformers_per_prompt"), key=rates.get)
    assert record["faster_transformers"] == faster
    assert record["ratio_ours_over_faster_transformers"] == pytest.approx(rates["ours"] / rates[faster])
    assert record["equal_work_checked"] is True
    sides = record["sides"]
    assert sides["ours"]["check"]["new_tokens_min"] == 8
    assert sides["transformers_per_prompt"]["check"]["new_tokens"] == 8
    assert sides["transformers_one_call"]["prompts_per_generate_call"] == 3
    assert sides["transformers_per_prompt"]["prompts_per_generate_call"] == 1
    assert sides["transformers_one_call"]["effective_eos_token_id"] is None
    assert sides["ours"]["compile_s"] > 0
    for side in ("ours", "transformers_one_call", "transformers_per_prompt"):
        assert record["peak_rss_mib"][side]["process"] > 0 and record["peak_rss_mib"][side]["during_timed_calls"] > 0
        assert record["breakdown"][side]["prefill_s"] > 0
    roofline = record["roofline"]
    assert roofline["best_gflop_per_s"] > 0 and roofline["tokens_per_s_at_roofline"] > 0
    assert roofline["fraction"]["ours"] == pytest.approx(rates["ours"] / roofline["tokens_per_s_at_roofline"])
    assert set(record["targets"]) >= {"speedup_met", "memory_at_most_faster_transformers_met", "roofline_met"}
    assert len(record["prompts"]["token_lengths"]) == 3 and record["quickstart_shape"] is None
    sweep = record["memory_sweep"]
    assert [p["num_samples"] for p in sweep["points"]] == [1, 3]
    assert all(p["call_peak_rss_mib"] > 0 and p["all_full_length"] for p in sweep["points"])
    # k and v, 2 layers, 8 new tokens, 4 kv heads, head_dim 16, float32
    assert sweep["analytic"]["generated_kv_cache_bytes_per_sample"] == 2 * 2 * 8 * 4 * 16 * 4
    assert set(record["quiet_machine"]) == {"benchmark", "memory_sweep"}
    assert "unchanged_during_run" in record["code_sha256_16"]
    assert record["machine"]["usable_cores"] >= 1 and record["command"]


def test_gpu_sampler_benchmark_smoke(tmp_path):
    # No breakdown here (its extra compiles would double the run); the CPU test above covers that code.
    record = _run("benchmarks.gpu_sampler", tmp_path / "gpu.json", "--repeats", "1", "--warmup", "0",
                  "--no_breakdown")
    assert record["sampled_tokens_per_call"] == 2 * 4 * 8
    assert record["tokens_per_s"]["ours"] > 0 and record["tokens_per_s"]["transformers"] > 0
    assert record["transformers_error"] is None and record["equal_work_checked"] is True
    assert record["ours"]["model_config"]["dtype"] == "bfloat16"
    assert record["transformers"]["dtype"] == "torch.bfloat16"
    assert record["device_bandwidth_gb_per_s"] > 0
    floor = record["bandwidth_floor"]
    assert floor["ideal_tokens_per_s"] > 0 and floor["our_layout_bytes_all_steps"] >= floor["bytes_read_all_steps"]
    assert 0 < record["fraction_of_ideal"]["whole_call"] and record["fraction_of_ideal"]["decode_only"] is None
    assert record["peak_memory_mib"]["ours_process_rss"] > 0


class _WordVocab:
    """One id per whitespace-separated word: enough to measure a prompt's length."""

    def encode(self, text):
        return [len(word) for word in text.split()]


def test_sampler_prompts_are_lsi_few_shot_cot_prompts_of_gsm8k():
    from benchmarks import sampler

    texts, sources = sampler.cot_prompts(3, exemplars_per_prompt=4)
    # Each prompt: 4 of the 8 exemplars (a different window each), then its own question.
    assert len(set(texts)) == 3 and len(sources) == 3
    assert all(text.count("Q: ") == 5 and text.endswith("\nA:") for text in texts)
    ids, source = sampler.long_cot_prompt(_WordVocab(), target_tokens=1500)
    assert 1200 < len(ids) <= 1500 and source.startswith("gsm8k exemplars")


def test_time_interleaved_alternates_sides_and_settles_each_timed_call_outside_the_timing():
    events = []

    def side(name, wall):
        def call():
            events.append(name)
            return wall, wall / 2

        return call

    timings = common.time_interleaved({"a": side("a", 1.0), "b": side("b", 3.0)}, warmup=1, repeats=3,
                                      settle={"b": lambda: events.append("settle b")})
    assert events == ["a", "b",  # warmup, no settling
                      "a", "settle b", "b",  # round 0: a first
                      "settle b", "b", "a",  # round 1: b first
                      "a", "settle b", "b"]
    assert timings["a"]["times_s"] == [1.0] * 3 and timings["b"]["median_s"] == 3.0
    assert timings["b"]["cpu_utilization"] == 0.5


def test_decode_paths_benchmark_runs_and_both_paths_sample_alike(tmp_path):
    from benchmarks import decode_paths

    record = decode_paths.main(["--models", "tiny", "--prompt_length", "16", "--samples", "2", "--new_tokens", "4",
                                "--repeats", "1", "--output", str(tmp_path / "decode_paths.json")])
    assert [row["layerwise"] for row in record["results"]] == [True, False]
    assert all(row["same_tokens_as_other_path"] and row["compile_s"] > 0 for row in record["results"])
    assert (tmp_path / "decode_paths.json").exists()


def test_dense_gemms_are_the_steps_matmul_flops():
    from benchmarks.trainer import dense_gemms

    for cfg in (get_config("smollm2-135m"), get_config("tiny", tie_embeddings=False)):
        tokens = 8 * 256
        flops = sum(2 * m * k * n * count for (m, k, n), count in dense_gemms(cfg, tokens).items())
        d = cfg.embed_dim
        norms = cfg.num_layers * 2 * d + d
        embedding_lookup = cfg.vocab_size * d if not cfg.tie_embeddings else 0  # a gather, not a matmul
        # Forward, input gradient and weight gradient: 3 x 2 FLOPs per weight per token, logits included.
        assert flops == 6 * tokens * (cfg.num_params - norms - embedding_lookup)


def test_trainer_benchmark_smoke(tmp_path):
    from benchmarks import gpu_trainer
    from benchmarks import trainer as bench

    record = bench.main(["--config", "tiny", "--repeats", "1", "--peak_flops", "1e12", "--autodiff_side",
                         "--output", str(tmp_path / "trainer.json")])
    assert json.loads((tmp_path / "trainer.json").read_text())["benchmark"] == "trainer"
    # Same weights, same batch: both sides' first loss must agree, or the comparison is not like for like.
    assert record["first_step_loss_difference"] < 1e-4
    assert record["ours"]["tokens_per_s"] > 0 and record["pytorch"]["tokens_per_s"] > 0
    assert 0 < record["ours"]["mfu"] < 1 and record["speedup_tokens_per_s"] > 0
    for side in ("ours", "pytorch"):  # every GEMM timed, in both libraries
        floor = record[side]["dense_gemm_floor"]
        assert len(floor["gemms"]) == len(bench.dense_gemms(get_config("tiny"), 2 * 32)) and floor["seconds"] > 0
    assert record["speedup_ceiling_from_gemm_floor"] > 0
    # The step without the hand-written backward passes trains the same first batch to the same loss.
    assert record["ours_autodiff"]["first_step_loss"] == pytest.approx(record["ours"]["first_step_loss"], rel=1e-5)
    assert record["custom_grads_speedup"] > 0
    record = gpu_trainer.run("tiny", 8, 32, 1, "none", warmup=1, repeats=1, peak_flops=None)
    assert record["tokens_per_s"] > 0 and record["mfu_vs_measured_matmul"] > 0


def test_gpu_check_smoke_runs_every_step_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.sh --smoke, as CI runs it: the tiny model through the GPU check's correctness and speed
    steps on the CPU's 8 simulated devices."""
    output = tmp_path / "gpu_check.json"
    result = subprocess.run(["benchmarks/gpu_check.sh", "--smoke", "--output", str(output)], cwd=REPO,
                            env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True,
                            timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads(output.read_text())
    assert record["smoke"] and record["passed"], record
    assert record["logits"]["argmax_agreement"] >= 0.9 and 0 < record["logits"]["rms_error_over_reference_std"] <= 0.05
    assert record["sharding"]["tokens_equal"] and record["sharding"]["devices"] == 8
    assert record["sampler"]["tokens_per_s"]["ours"] > 0
    assert record["trainer"]["custom_grads"] is True and record["trainer_autodiff"]["custom_grads"] is False
    assert record["trainer"]["mfu_vs_measured_matmul"] > 0


def test_eval_throughput_benchmark_runs_both_stages_of_each_setting(tmp_path):
    """benchmarks.eval_throughput on a tiny random checkpoint standing in for SmolLM2, the quickstart's stages cut to
    a few questions and tokens: each setting's sample and eval stage measured, and both settings' samples compared."""
    from helpers.runs import environment
    from helpers.toy import save_tiny_checkpoint

    model = save_tiny_checkpoint(tmp_path / "tiny_model")
    tiny = tmp_path / "tiny.gin"
    tiny.write_text("\n".join([
        f"lsi.Experiment.model = '{model}'", "lsi.SampleStageConfig.num_samples = 2",
        "lsi.SampleStageConfig.max_new_tokens = 4", "lsi.SampleStageConfig.batch_size = 4",
        "lsi.SampleStageConfig.num_shards = 1", "lsi.EvalConfig.num_samples = 2", "lsi.EvalConfig.max_new_tokens = 4",
        "lsi.EvalConfig.subsample_sizes = (1, 2)", "lsi.EvalConfig.batch_size = 4"]) + "\n")
    output = tmp_path / "eval_throughput.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.eval_throughput", "--model_gin", str(tiny),
                             "--pool_size", "4", "--eval_size", "4", "--retire_stages", "1,0", "--output", str(output)],
                            cwd=REPO, env=environment(), capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads(output.read_text())
    assert list(record["settings"]) == ["retire_stages_1", "retire_stages_0"]
    for setting in record["settings"].values():
        sample, evaluation = setting["sample"], setting["eval"]
        assert (sample["prompts"], sample["samples_per_prompt"], sample["max_new_tokens"]) == (4, 2, 4)
        assert sample["sampled_tokens"] == 4 * 2 * 4  # a random model never stops early
        # Greedy rides along as self-consistency's extra argmax sample: two sampler runs for three modes.
        assert sorted(evaluation["sampler_runs"]) == ["cot_greedy+self_consistency", "zero_shot_cot"]
        shared = evaluation["sampler_runs"]["cot_greedy+self_consistency"]["accuracy"]
        assert set(shared) == {"cot_greedy", "self_consistency"}  # each mode's own accuracy
        assert evaluation["questions"] == 4 and evaluation["tokens_per_s"] > 0
        assert setting["eval_over_sample"] == pytest.approx(evaluation["tokens_per_s"] / sample["tokens_per_s"])
    assert record["eval_over_sample"] == record["settings"]["retire_stages_1"]["eval_over_sample"]
    assert record["target_met"] == (record["eval_over_sample"] >= 0.75)
    same = record["same_samples_across_settings"]
    # Every sample of the sample stage, and each eval question's predictions in each mode.
    assert same["equal"] and same["differing"] == 0 and same["compared"] == 4 * 2 + 3 * 4
    assert set(record["speedup_over_retire_stages_0"]) == {"sample", "eval"}
