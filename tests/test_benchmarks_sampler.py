"""Smoke runs of the sampler benchmarks (benchmarks/sampler.py, benchmarks/gpu_sampler.py) on the tiny config.

Each runs as its own command, as a user would run it, with tiny workloads; the result JSON must describe a run in
which both sides sampled the same number of tokens.
"""

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(module: str, output: pathlib.Path, *args: str) -> dict:
    # The child inherits conftest's XLA_FLAGS (low LLVM optimisation: compile time dominates at this size).
    result = subprocess.run([sys.executable, "-m", module, "--config", "tiny", "--output", str(output), *args],
                            cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(output.read_text())


def test_sampler_benchmark_smoke(tmp_path):
    record = _run("benchmarks.sampler", tmp_path / "sampler.json", "--repeats", "1", "--warmup", "0",
                  "--sweep_samples", "1,3")
    settings = record["settings"]
    assert (settings["num_prompts"], settings["num_samples"], settings["max_new_tokens"]) == (3, 4, 8)
    assert record["sampled_tokens_per_call"] == 3 * 4 * 8
    assert record["tokens_per_s"]["ours"] > 0 and record["tokens_per_s"]["transformers"] > 0
    assert record["ratio_ours_over_transformers"] > 0
    assert record["equal_work_checked"] is True
    assert record["ours"]["check"]["new_tokens_min"] == 8 and record["transformers"]["check"]["new_tokens"] == 8
    assert record["transformers"]["effective_eos_token_id"] is None
    assert record["compile_s_ours"] > 0
    for side in ("ours", "transformers"):
        assert record["peak_rss_mib"][side]["process"] > 0 and record["peak_rss_mib"][side]["during_timed_calls"] > 0
        assert record["breakdown"][side]["prefill_s"] > 0
    assert set(record["targets"]) >= {"speedup_met", "memory_below_transformers_met"}
    assert len(record["prompts"]["token_lengths"]) == 3 and record["prompts"]["padded_shape_ours"][1] >= 32
    sweep = record["memory_sweep"]
    assert [p["num_samples"] for p in sweep["points"]] == [1, 3]
    assert all(p["call_peak_rss_mib"] > 0 and p["all_full_length"] for p in sweep["points"])
    # k and v, 2 layers, 8 new tokens, 4 kv heads, head_dim 16, float32
    assert sweep["analytic"]["generated_kv_cache_bytes_per_sample"] == 2 * 2 * 8 * 4 * 16 * 4
    assert set(record["quiet_machine"]) == {"comparison", "memory_sweep"}
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
