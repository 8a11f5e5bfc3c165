"""The two generation engines: ``model.generate`` on the training backend's model, and vLLM."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from kitrec_fast.eval.generate.options import GenerateError


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

    def generate(self, prompts: list[list[int]]) -> list[Generated]:
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


class VLLMEngine:
    """vLLM with the adapter as a LoRA request (optional dependency)."""

    name = "vllm"
    _LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # ranks vLLM accepts for max_lora_rank

    def __init__(self, cfg, model_path: str, tokenizer_path: str, adapter: Optional[str], stop_ids: list[int],
                 max_new_tokens: int):
        try:
            from vllm import LLM, SamplingParams
            from vllm.lora.request import LoRARequest
        except ImportError as exc:
            raise GenerateError(f"--engine vllm needs vLLM, which is not importable here ({exc}); install it "
                            "(pip install vllm, on a CUDA machine) or use --engine hf") from None
        kwargs: dict[str, Any] = {"model": model_path, "tokenizer": tokenizer_path, "seed": cfg.train.seed,
                                  "enable_lora": adapter is not None}
        if adapter is not None:
            kwargs["max_lora_rank"] = next((r for r in self._LORA_RANKS if r >= cfg.lora.r), cfg.lora.r)
        if cfg.model.load_in_4bit:
            kwargs["quantization"] = "bitsandbytes"  # the same nf4 base the adapter was trained on
        self.llm = LLM(**kwargs)
        self.params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=stop_ids,
                                     skip_special_tokens=False)
        self.lora = LoRARequest("kitrec", 1, adapter) if adapter is not None else None
        self.stop_ids = stop_ids

    def generate(self, prompts: list[list[int]]) -> list[Generated]:
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], self.params,
                                 lora_request=self.lora, use_tqdm=False)
        results = []
        for o in outs:
            g = cut_at_stop(list(o.outputs[0].token_ids), self.stop_ids)
            results.append(Generated(g.token_ids, g.finished or o.outputs[0].finish_reason == "stop"))
        return results


def cut_at_stop(tokens: list[int], stop_ids: Sequence[int]) -> Generated:
    """New tokens up to the first stop token (whatever follows it is padding)."""
    stops = set(stop_ids)
    for i, t in enumerate(tokens):
        if t in stops:
            return Generated(tokens[:i], True)
    return Generated(tokens, False)
