"""The two generation engines: ``model.generate`` on the training backend's model, and vLLM."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from kitrec_fast.eval.generate.vllm_check import import_vllm, vllm_dtype


@dataclass
class Generated:
    token_ids: list[int]  # new tokens, the stop token excluded
    finished: bool  # stopped on a stop token (False: hit max_new_tokens)

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids) + int(self.finished)


class HFEngine:
    """``model.generate`` on the training backend's model (Unsloth inference mode on the fast path)."""

    name = "hf"

    def __init__(self, backend_module, cfg, adapter: Optional[str], stop_ids: list[int], pad_id: int,
                 max_new_tokens: int, max_seq_length: int):
        self.model = backend_module.load_for_inference(cfg, adapter, max_seq_length=max_seq_length)
        self.stop_ids = stop_ids
        self.pad_id = pad_id
        self.max_new_tokens = max_new_tokens

    def generate(self, prompts: list[list[int]], adapter: Optional[str] = None) -> list[Generated]:
        import torch

        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            # Left padding: every row's last prompt token sits at the same position, so the first
            # generated token of every row comes from the same step.
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=self.max_new_tokens,
                do_sample=False, temperature=None, top_p=None, top_k=None,  # greedy; override the model's
                eos_token_id=self.stop_ids, pad_token_id=self.pad_id, use_cache=True)
        return [cut_at_stop(row, self.stop_ids) for row in out[:, width:].tolist()]


# vLLM on a CPU-only machine reserves this fraction of host RAM for its KV cache (on a GPU the
# setting is the fraction of device memory; vLLM's default 0.92 of a shared host's RAM fails).
CPU_MEMORY_FRACTION = 0.1
GPU_MEMORY_FRACTION = 0.9
_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM accepts for max_lora_rank


def choose_engine(requested: str) -> tuple[str, str]:
    """``(engine, why)``: ``auto`` is vLLM where it is installed and a GPU is present, else hf."""
    if requested != "auto":
        return requested, ""
    import importlib.util

    import torch

    has_vllm = importlib.util.find_spec("vllm") is not None
    gpu = torch.cuda.is_available()
    if has_vllm and gpu:
        return "vllm", "vLLM installed and a GPU present"
    return "hf", ", ".join(why for why, missing in (("vLLM not installed", not has_vllm), ("no GPU", not gpu))
                           if missing)


def engine_settings(max_model_len: int, max_num_seqs: int) -> tuple[str, dict[str, Any]]:
    """``(precision, settings)`` of a vLLM engine; ``eval generate``'s engine and ``serve`` share them."""
    import torch

    gpu = torch.cuda.is_available()
    precision = vllm_dtype()
    return precision, {
        "dtype": precision, "max_model_len": max_model_len, "max_num_seqs": max_num_seqs,
        # KitREC prompts of one test set share the template and task sections; the prefix cache
        # keeps their KV once. Chunked prefill lets 7k-token prefills interleave with decodes.
        "enable_prefix_caching": True, "enable_chunked_prefill": True,
        "gpu_memory_utilization": GPU_MEMORY_FRACTION if gpu else CPU_MEMORY_FRACTION,
        # CPU runs are tests: torch.compile's C++ warm-up costs minutes per engine start there and
        # gains nothing on a tiny model. GPUs keep compilation and CUDA graphs (decode speed).
        "enforce_eager": not gpu,
    }


def lora_settings(ranks: Sequence[int]) -> dict[str, Any]:
    """vLLM's LoRA settings for adapters of these ranks, one slot each."""
    rank = max(ranks)
    return {"enable_lora": True, "max_loras": len(ranks), "max_cpu_loras": len(ranks),
            "max_lora_rank": next((r for r in _LORA_RANKS if r >= rank), rank)}


class VLLMEngine:
    """vLLM: the unquantized base (bf16 on a GPU, fp32 on CPU) with each run's adapter as a LoRA request.

    ``adapters`` maps a request name to ``(adapter dir, LoRA rank)``: several adapters of the same
    base share one engine (``max_loras`` slots, one request per call).
    """

    name = "vllm"

    def __init__(self, model_path: str, adapters: dict[str, tuple[str, int]], stop_ids: list[int],
                 max_new_tokens: int, max_model_len: int, max_num_seqs: int, seed: int):
        vllm = import_vllm()
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest

        self.version = vllm.__version__
        self.precision, self.settings = engine_settings(max_model_len, max_num_seqs)
        kwargs: dict[str, Any] = {"model": model_path, "seed": seed, **self.settings}
        if adapters:
            kwargs.update(lora_settings([r for _, r in adapters.values()]))
        self.llm = _start_interruptibly(lambda: LLM(**kwargs))
        # detokenize=False: prompts go in as ids and the command decodes the ids itself, as with hf.
        self.params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=stop_ids,
                                     detokenize=False)
        self.requests = {name: LoRARequest(name, i + 1, path) for i, (name, (path, _)) in enumerate(adapters.items())}
        self.stop_ids = stop_ids

    def generate(self, prompts: list[list[int]], adapter: Optional[str] = None) -> list[Generated]:
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], self.params,
                                 lora_request=self.requests[adapter] if adapter else None, use_tqdm=False)
        results = []
        for o in outs:
            g = cut_at_stop(list(o.outputs[0].token_ids), self.stop_ids)
            results.append(Generated(g.token_ids, g.finished or o.outputs[0].finish_reason == "stop"))
        return results


def _start_interruptibly(start):
    """``start()`` (vLLM's engine start) in a thread, waited for where Ctrl-C reaches.

    vLLM's client waits for its engine processes to be ready in one zmq poll of up to
    ``VLLM_ENGINE_READY_TIMEOUT_S`` (600 s). A Ctrl-C there lands on one of zmq's threads, so Python
    sees it only when that poll ends, while the engine processes, interrupted with it, are gone: the
    command hung. Waiting from here, Ctrl-C stops the engine processes this command started and
    goes on as the KeyboardInterrupt that ends the command (exit 130).
    """
    import multiprocessing
    import threading
    from concurrent.futures import Future

    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(start())
        except BaseException as exc:  # handed to the waiting thread, which raises it
            future.set_exception(exc)

    # A daemon: after a Ctrl-C it is left in vLLM's poll, and must not hold up the exit.
    thread = threading.Thread(target=run, name="vllm-engine-start", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.2)
    except KeyboardInterrupt:
        children = multiprocessing.active_children()
        for child in children:
            child.terminate()
        for child in children:
            child.join(10)
        raise
    return future.result()


def cut_at_stop(tokens: list[int], stop_ids: Sequence[int]) -> Generated:
    """New tokens up to the first stop token (whatever follows it is padding)."""
    stops = set(stop_ids)
    for i, t in enumerate(tokens):
        if t in stops:
            return Generated(tokens[:i], True)
    return Generated(tokens, False)
