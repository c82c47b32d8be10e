"""The llama.cpp side's own check, run where llama-cpp-python is installed (a benchmark venv, never lsi's):

    python -m benchmarks.llama_cpp_side --check [--prompts 2 --samples 4 --new_tokens 16 --greedy_prompts 5 ...]

It prints llama.cpp's sampled tokens/s of a small shape of the sampler benchmark's workload (its few-shot GSM8K CoT
prompts, temperature 0.7, top-k 40, no early stop) on the F32 copy of the packaged model (`benchmarks.gguf_export`)
and on the packaged Q4_1 file itself, and how close llama.cpp's outputs are to ours: the greedy continuations of the
first `--greedy_prompts` prompts, token for token, by llama.cpp on the F32 copy (the values our sampler computes
with) and on the Q4_1 file against our greedy sampler on the packaged file.

Our side (prompts, tokenizer, greedy sampling: jax) runs in a spawned process of its own and each llama.cpp model in
another, so this process imports neither jax nor llama_cpp.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks import common, gguf_export, sampler


def ours_prompts_and_greedy(checkpoint: str, num_prompts: int, exemplars: int, new_tokens: int) -> dict[str, Any]:
    """The packaged file's path, the sampler benchmark's first `num_prompts` prompts (token ids), EOS, and our
    greedy continuations of them: int32 [prompts, new_tokens], no early stop. Runs in a process of its own."""
    from lsi.checkpoints import load_checkpoint, resolve_model_path  # noqa: PLC0415  (jax: only in this process)
    from lsi.decoding import SamplerSpec, TransformerLM, bucket_length, make_sampler  # noqa: PLC0415
    from lsi.sampling_methods import Greedy  # noqa: PLC0415
    from lsi.vocab import encode_model_input, load_vocabulary  # noqa: PLC0415

    path = resolve_model_path(checkpoint)
    vocab = load_vocabulary(path)
    texts, sources = sampler.cot_prompts(num_prompts, exemplars)
    prompts = [encode_model_input(vocab, text) for text in texts]
    cfg, params = load_checkpoint(path)
    tokens, mask = sampler.pad(prompts, bucket_length(max(len(p) for p in prompts)), left=False)
    spec = SamplerSpec(num_samples=1, max_new_tokens=new_tokens, method=Greedy(), pad_id=sampler.PAD_ID)
    out = make_sampler(TransformerLM(cfg), spec)(params, tokens.astype(np.int32), mask.sum(1, dtype=np.int32),
                                                 np.arange(len(prompts), dtype=np.int32), np.int32(0))
    return {"path": str(path), "prompts": prompts, "prompt_sources": sources, "eos_id": vocab.eos_id,
            "greedy": np.asarray(out.tokens)[:, 0, :new_tokens]}


def greedy_agreement(ours: np.ndarray, theirs: np.ndarray) -> dict[str, Any]:
    """Per prompt: whether the [prompts, new_tokens] continuations are equal, and the first position they differ."""
    first = [int(np.argmax(a != b)) if (a != b).any() else None for a, b in zip(ours, theirs, strict=True)]
    return {"equal": [f is None for f in first], "all_equal": all(f is None for f in first),
            "first_difference": first, "equal_tokens_share": float((ours == theirs).mean())}


def measure_llama_cpp(gguf_path: str, workload: sampler.Workload, threads: int, eos_id: int | None,
                      greedy_prompts: Sequence[Sequence[int]], greedy_tokens: int, args: argparse.Namespace
                      ) -> dict[str, Any]:
    """llama.cpp's timed calls of `workload`, its report, and its greedy continuations, in a process of its own."""
    from benchmarks.llama_cpp_side import LlamaCppSampler  # noqa: PLC0415  (the side's process imports llama_cpp)

    with common.start_side(LlamaCppSampler, gguf_path, workload, threads, eos_id, args.kv_cache_type,
                           args.prompts_per_batch, args.kv_unified) as side:
        timing = common.time_sides({"llama.cpp": side}, warmup=workload.warmup, repeats=workload.repeats)["llama.cpp"]
        report = side.call("report", timing["median_s"], True)
        greedy = side.call("greedy", greedy_prompts, greedy_tokens)
        report["memory"]["process_peak_rss_mib"] = side.close() / common.MIB
    rate = common.throughput(workload.sampled_tokens_per_call, timing)
    return report | {"timing": timing, "tokens_per_s": rate, "greedy": greedy}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="smollm2-135m-instruct", help="packaged model name or .gguf file")
    parser.add_argument("--threads", type=int, default=common.usable_cores())
    parser.add_argument("--prompts", type=int, default=2, help="prompts of the timed shape")
    parser.add_argument("--samples", type=int, default=4, help="samples per prompt of the timed shape")
    parser.add_argument("--new_tokens", type=int, default=16, help="new tokens per sample of the timed shape")
    parser.add_argument("--greedy_prompts", type=int, default=5)
    parser.add_argument("--greedy_tokens", type=int, default=32)
    parser.add_argument("--exemplars", type=int, default=4, help="CoT exemplars per prompt (as benchmarks.sampler)")
    parser.add_argument("--kv_cache_type", choices=("f32", "f16"), default="f32")
    parser.add_argument("--prompts_per_batch", type=int, default=1)
    parser.add_argument("--no_kv_unified", dest="kv_unified", action="store_false",
                        help="a KV stream per sequence instead of one shared pool of cells")
    parser.add_argument("--formats", default="F32,Q4_1", help="which files to time: F32 (written from the same "
                        "tensors) and/or Q4_1 (the packaged file)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cache_dir", default=None, help="where the F32 copy is cached (gguf_export's default)")
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    print("[llama.cpp check] ours: prompts and greedy continuations", flush=True)
    ours, _ = common.run_isolated(ours_prompts_and_greedy, args.checkpoint, max(args.prompts, args.greedy_prompts),
                                  args.exemplars, args.greedy_tokens)
    f32_path = str(gguf_export.unquantized_gguf(ours["path"], "f32", args.cache_dir))
    workload = sampler.Workload(prompts=tuple(tuple(p) for p in ours["prompts"][:args.prompts]),
                                num_samples=args.samples, max_new_tokens=args.new_tokens, temperature=0.7, top_k=40,
                                seed=0, warmup=args.warmup, repeats=args.repeats)
    greedy_prompts = ours["prompts"][:args.greedy_prompts]
    results = {}
    for name, path in (("F32", f32_path), ("Q4_1", ours["path"])):
        if name not in args.formats.split(","):
            continue
        print(f"[llama.cpp check] llama.cpp {name}: {len(workload.prompts)} prompts "
              f"{[len(p) for p in workload.prompts]} x {args.samples} samples x {args.new_tokens} tokens", flush=True)
        result = measure_llama_cpp(path, workload, args.threads, ours["eos_id"], greedy_prompts, args.greedy_tokens,
                                   args)
        result["greedy_vs_ours"] = greedy_agreement(ours["greedy"][:args.greedy_prompts], result.pop("greedy"))
        results[name] = result
    print(summary(results, args))
    record = {"settings": vars(args), "prompt_sources": ours["prompt_sources"], "llama_cpp": results,
              **common.environment_info(("llama_cpp_python", "gguf", "numpy", "jax"))}
    if args.output:
        from lsi.io_utils import write_json_atomic  # noqa: PLC0415

        write_json_atomic(args.output, record)
    return record


def summary(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    rows = [[name, r["tokens_per_s"]["median"], r["timing"]["median_s"], r["timing"]["cpu_utilization"],
             r["timing"]["other_processes_cores"], r["memory"]["sampling_peak_rss_mib"], r["check"]["all_full_length"],
             f"{sum(r['greedy_vs_ours']['equal'])}/{len(r['greedy_vs_ours']['equal'])}",
             r["greedy_vs_ours"]["equal_tokens_share"]] for name, r in results.items()]
    header = ["llama.cpp", "tokens/s", "median s", "cpu util", "others' cores", "call peak MiB", "full length",
              f"greedy = ours ({args.greedy_tokens} tok)", "equal token share"]
    lines = [common.table(header, rows)]
    for name, r in results.items():
        lines.append(f"{name}: first differing position per prompt {r['greedy_vs_ours']['first_difference']}; "
                     f"{r['model']['description']}; threads {r['runtime']['n_threads']}; "
                     f"prefill {r['breakdown']['prefill_s']:.3f} s, "
                     f"decode step {r['breakdown']['decode_step_s']:.4f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
