"""The peer side of every benchmark: transformers' models and a plain PyTorch training loop, each class built in a
side process of its own (`common.SideProcess`). This module imports torch and transformers and no jax (see
`benchmarks.ours`): the peer's peak memory is that of its own library.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig

from benchmarks import common, forward, model_sources, sampler, trainer


def load_pretrained(hf_directory: str, gguf_file: str | None, device: str = "cpu") -> Any:
    """transformers' own loading of the same weights, float32."""
    return AutoModelForCausalLM.from_pretrained(hf_directory, gguf_file=gguf_file, dtype=torch.float32).to(device)


# --- sampling -----------------------------------------------------------------------------------------------------

def generation_config(workload: sampler.Workload, max_new_tokens: int | None = None) -> GenerationConfig:
    """transformers' settings equal to ours: sampling, T, top-k, no top-p, m return sequences, no EOS stop."""
    return GenerationConfig(
        do_sample=True, temperature=workload.temperature, top_k=workload.top_k, top_p=1.0,
        max_new_tokens=max_new_tokens or workload.max_new_tokens, num_return_sequences=workload.num_samples,
        eos_token_id=None, pad_token_id=sampler.PAD_ID, use_cache=True,
    )


class TheirGenerate(common.Side):
    """`load_model(device)` gives the model (on cuda when there is one); one call is `generate` of every prompt,
    left-padded, `prompts_per_call` prompts at a time: all of them in one call by default (unless a call ran out of
    device memory: then it retries with half as many), or 1, a `generate` per prompt with num_return_sequences=m
    (no padding; on a CPU often the faster way to run transformers)."""

    def __init__(self, load_model: Callable[[str], Any], workload: sampler.Workload, threads: int,
                 eos_id: int | None, prompts_per_call: int | None = None) -> None:
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cpu":
            torch.set_num_threads(threads)
        self.workload, self.eos_id = workload, eos_id
        start = time.perf_counter()
        self.model = load_model(self.device).eval()
        self.load_s = time.perf_counter() - start
        # `generate` fills an unset eos_token_id from the model's own generation config: unset it there too. No EOS
        # means no stopping criterion; it changes no logits processor, so the distribution is unchanged (unlike
        # `min_new_tokens`, which masks EOS).
        self.model.generation_config.eos_token_id = None
        self.tokens, self.mask = sampler.pad(workload.prompts, max(len(p) for p in workload.prompts), left=True)
        self.config = generation_config(workload)
        self.prompts_per_call = prompts_per_call or len(workload.prompts)
        self.out_of_memory_retries: list[str] = []
        torch.manual_seed(workload.seed)
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def call(self, config: GenerationConfig | None = None) -> list[torch.Tensor]:
        generated = []
        with torch.inference_mode():
            for lo in range(0, len(self.tokens), self.prompts_per_call):
                mask = self.mask[lo:lo + self.prompts_per_call]
                keep = mask.sum(0) > 0  # drop columns that are padding in every row of this chunk
                ids = torch.from_numpy(self.tokens[lo:lo + self.prompts_per_call][:, keep]).to(self.device)
                out = self.model.generate(input_ids=ids, attention_mask=torch.from_numpy(mask[:, keep]).to(self.device),
                                          generation_config=config or self.config)
                generated.append(out[:, ids.shape[1]:].cpu())
        if self.device == "cuda":
            torch.cuda.synchronize()
        return generated

    def run_once(self) -> tuple[float, float]:
        while True:
            try:
                return super().run_once()
            except torch.OutOfMemoryError as e:
                self.out_of_memory_retries.append(f"{self.prompts_per_call} prompts per generate: "
                                                  f"{str(e).splitlines()[0]}")
            # Outside the except block: its traceback no longer pins the failed call's tensors.
            self.output = None
            gc.collect()
            torch.cuda.empty_cache()
            if self.prompts_per_call == 1:
                raise RuntimeError(f"transformers runs out of memory even with one prompt per generate: "
                                   f"{self.out_of_memory_retries}")
            self.prompts_per_call = max(1, self.prompts_per_call // 2)
            torch.cuda.reset_peak_memory_stats()

    def report(self, median_s: float, breakdown: bool) -> dict[str, Any]:
        generated, cuda = torch.cat(self.output).numpy(), self.device == "cuda"
        try:  # the eos_token_id `generate` will use (None = never stops early); private API, so best effort
            eos = self.model._prepare_generation_config(self.config)[0].eos_token_id
        except Exception as e:  # noqa: BLE001
            eos = f"unknown ({type(e).__name__})"
        result = {
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "model_class": type(self.model).__name__,
            "attn_implementation": getattr(self.model.config, "_attn_implementation", None),
            "dtype": str(self.model.dtype),
            "padded_prompt_shape": list(self.tokens.shape),
            "prompts_per_generate_call": self.prompts_per_call,
            "out_of_memory_retries": self.out_of_memory_retries,
            "generate_kwargs": {k: v for k, v in self.config.to_diff_dict().items()
                                if not k.startswith("transformers")},
            "effective_eos_token_id": eos,
            "load_s": self.load_s,
            "check": {"generated_shape": list(generated.shape),
                      "sequences_shape": [generated.shape[0], self.tokens.shape[1] + generated.shape[1]],
                      "new_tokens": int(generated.shape[1]),
                      "all_full_length": generated.shape == (len(self.tokens) * self.workload.num_samples,
                                                             self.workload.max_new_tokens),
                      "eos_tokens_sampled": None if self.eos_id is None else int((generated == self.eos_id).sum())},
            "memory": self.call_memory("sampling") | {
                "process_peak_before_breakdown_mib": common.peak_rss_bytes() / common.MIB,
                "device_peak_allocated_mib": torch.cuda.max_memory_allocated() / common.MIB if cuda else None,
                "device_peak_reserved_mib": torch.cuda.max_memory_reserved() / common.MIB if cuda else None},
            "runtime": {"torch_num_threads": torch.get_num_threads(),
                        "torch_num_interop_threads": torch.get_num_interop_threads()},
        }
        self.output = None
        if breakdown:
            prefill_s = common.timed_call(lambda: self.call(generation_config(self.workload, max_new_tokens=1)))[0]
            steps = self.workload.max_new_tokens - 1
            result["breakdown"] = {
                "prefill_s": prefill_s,
                "prefill_note": "a max_new_tokens=1 generate: prefill of batch * samples rows (generate repeats each "
                                "prompt num_return_sequences times) + one token",
                "decode_s": median_s - prefill_s,
                "decode_step_s": (median_s - prefill_s) / steps if steps else None,
                "prefill_share": prefill_s / median_s,
            }
        return result


def model_with_our_weights(config_name: str, seed: int, device: str) -> Any:
    """A LlamaForCausalLM of the equivalent config holding our random weights (float32 draw -> bfloat16)."""
    from lsi.checkpoints import config_to_hf  # noqa: PLC0415  (these bring jax, needed to draw the weights)
    from lsi.checkpoints.layout import params_to_hf  # noqa: PLC0415

    cfg, params = model_sources.random_params(config_name, seed, np.float32)
    hf_config = LlamaConfig(**{k: v for k, v in config_to_hf(cfg).items() if k != "torch_dtype"})
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16)
    state = params_to_hf(cfg, params)
    del params
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    tied = {"lm_head.weight"} if cfg.tie_embeddings else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"weights do not map onto {type(model).__name__}: missing {missing}, "
                           f"unexpected {unexpected}")
    if cfg.tie_embeddings and model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        model.lm_head.weight = model.model.embed_tokens.weight
    return model


def measure_gpu_sampler(config_name: str, workload: sampler.Workload, breakdown: bool) -> dict[str, Any]:
    """`benchmarks.gpu_sampler`'s measurement of transformers' side."""
    side = TheirGenerate(lambda device: model_with_our_weights(config_name, workload.seed, device), workload,
                         common.usable_cores(), None)
    return common.measure_side(side, workload.warmup, workload.repeats, breakdown)


# --- forward ------------------------------------------------------------------------------------------------------

class TheirsForward(common.Side):
    """transformers' own loading of the same weights; every call under `torch.inference_mode()`."""

    def __init__(self, source: model_sources.ModelSource, workload: forward.Workload, threads: int) -> None:
        torch.set_num_threads(threads)
        start = time.perf_counter()
        self.model = load_pretrained(source.hf_directory, source.gguf_file).eval()
        self.load_s = time.perf_counter() - start
        self.tokens = forward.benchmark_tokens(workload, self.model.config.vocab_size)
        self.input_ids = torch.from_numpy(self.tokens.astype(np.int64))

    def call(self) -> torch.Tensor:
        with torch.inference_mode():
            # use_cache=False: our full forward returns only logits, so neither side keeps a KV cache.
            return self.model(input_ids=self.input_ids, use_cache=False).logits

    def finish(self, logits_path: str | None) -> dict[str, Any]:
        if logits_path:
            np.save(logits_path, self.output.float().numpy())
        return {
            "model_class": type(self.model).__name__,
            "attn_implementation": getattr(self.model.config, "_attn_implementation", None),
            "logits_shape": list(self.output.shape),
            "logits_dtype": str(self.output.dtype),
            "tokens_sha256_16": forward.digest(self.tokens),
            "load_s": self.load_s,
            "memory": self.call_memory("forward"),
            "runtime": {"torch_num_threads": torch.get_num_threads(),
                        "torch_num_interop_threads": torch.get_num_interop_threads(),
                        "mkldnn_available": torch.backends.mkldnn.is_available(),
                        "mkl_available": torch.backends.mkl.is_available()},
        }


# --- training -----------------------------------------------------------------------------------------------------

class TorchTrainStep(common.Side):
    """A plain loop on transformers' model with torch's AdamW, one step per call; the first runs on construction, as
    our side's first (compiling) step does: both sides time steps 2 onwards."""

    def __init__(self, work: trainer.Workload) -> None:
        self.work = work
        self.model = load_pretrained(work.hf_directory, work.gguf_file).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=work.learning_rate, betas=(0.9, 0.999),
                                           eps=1e-8, weight_decay=0.0)
        self.tokens = torch.tensor(work.tokens(self.model.config.vocab_size), dtype=torch.long)
        self.losses: list[float] = []
        self.call()

    def call(self) -> None:
        loss = self.model(input_ids=self.tokens, labels=self.tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.losses.append(float(loss.detach()))

    def finish(self) -> dict[str, Any]:
        from lsi.checkpoints import load_config  # noqa: PLC0415  (brings jax: only after the timed steps)

        cfg = load_config(self.work.checkpoint_path)
        return {"first_step_loss": self.losses[0], "losses": self.losses, "torch_threads": torch.get_num_threads(),
                "dense_gemm_floor": trainer.gemm_floor("torch", cfg, self.work.batch_size * self.work.length,
                                                       lambda f: f, torch.from_numpy, lambda x: x)}
