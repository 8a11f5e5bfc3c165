"""Model FLOPs of one QLoRA training step, for the MFU estimate.

What is counted (multiply-add = 2 FLOPs), per *non-padding* token of a sequence of length S:

* base linear layers (q, k, v, o, gate, up, down) of every decoder layer: forward ``2*P`` where P is
  their weight count; backward ``2*P`` (gradient w.r.t. the input only: the 4-bit base weights are
  frozen, so there is no weight-gradient matmul). Hence 4P, not the usual 6P of full fine-tuning.
* attention scores and values (causal, so half of the S x S products): forward ``2*S*d_q`` per layer
  (QK^T and PV, each ``S*S*d_q`` multiply-adds halved by the mask), backward twice that (both
  operands of each matmul are activations).
* LoRA adapters: forward ``2*r*(in+out)`` per adapted projection, backward twice that (input and
  adapter-weight gradients).
* LM head: only at *trained* positions, because the project's chunked loss never multiplies the
  masked prompt positions by the head: forward ``2*H*V``, backward ``2*H*V`` (hidden-state gradient
  only; the head is frozen).

Not counted: gradient-checkpointing recomputation, 4-bit dequantization, norms, rotary embeddings,
softmax, the optimizer. MFU = counted FLOPs / step time / the dense bf16 matmul rate measured on the
same card in the same run, so it answers "how close to the card's practical matmul speed does the
useful work run", and recomputation shows up as lost MFU rather than inflating it.
"""

from __future__ import annotations

from typing import Any, Iterable

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def projection_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each projection of one decoder layer."""
    h = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads)
    hd = int(cfg.get("head_dim") or h // heads)
    inter = int(cfg["intermediate_size"])
    return {
        "q_proj": (h, heads * hd), "k_proj": (h, kv * hd), "v_proj": (h, kv * hd), "o_proj": (heads * hd, h),
        "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h),
    }


def step_flops(cfg: dict[str, Any], seq_lens: Iterable[int], trained_tokens: int, lora_r: int,
               lora_targets: Iterable[str] = PROJECTIONS) -> dict[str, float]:
    """Model FLOPs of one forward+backward over sequences of the given (non-padding) lengths."""
    seq_lens = [int(s) for s in seq_lens]
    tokens = sum(seq_lens)
    layers = int(cfg["num_hidden_layers"])
    shapes = projection_shapes(cfg)
    d_q = shapes["q_proj"][1]
    base_params = sum(i * o for i, o in shapes.values())
    lora_params = sum(lora_r * (shapes[t][0] + shapes[t][1]) for t in lora_targets)
    linear = 4.0 * base_params * tokens * layers
    # sum over sequences of S^2 (causal half already folded into the 2*S*d_q per-token figure)
    attention = 3.0 * 2.0 * d_q * sum(s * s for s in seq_lens) * layers
    lora = 6.0 * lora_params * tokens * layers
    head = 4.0 * int(cfg["hidden_size"]) * int(cfg["vocab_size"]) * int(trained_tokens)
    return {"linear": linear, "attention": attention, "lora": lora, "lm_head": head,
            "total": linear + attention + lora + head}
