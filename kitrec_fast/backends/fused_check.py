"""Unsloth's fused LoRA functions against PEFT on one small Qwen3 decoder layer.

    python -m kitrec_fast.backends.fused_check [--cases doctor|all]   -> one JSON line

The functions the fast path installs per layer (``apply_lora_qkv``, ``apply_lora_o``, the SwiGLU MLP
function) and the RMSNorm its decoder layer calls run beside PEFT's modules on the same inputs, the
same upstream gradients and (with LoRA dropout) the same dropout masks; the report is the largest
absolute error per function for the outputs, the input gradient and each LoRA A/B gradient.

On a GPU: the real Triton kernels in the training dtype (bf16, fp16 where the card has none), and
once more through Unsloth's own ``patch_peft_model`` (it installs the functions on 16-bit bases
only). Without one: Triton's interpreter runs the same kernels on CPU tensors in fp32 under
Unsloth's CPU test switch; both variables must be set before unsloth (and triton) are imported, so
this runs in a child process of its own started with ``INTERPRETER_ENV`` (``run`` refuses CPU without).

Only the fast side imports unsloth (through ``unsloth_backend``); the PEFT side, e.g.
``whole_step(fast=False)``, runs in a baseline process as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import types

INTERPRETER_ENV = {"UNSLOTH_ALLOW_CPU": "1", "TRITON_INTERPRET": "1"}
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_R = 8
LORA_ALPHA = 16  # alpha / r = 2 as in every recipe (r 32 / alpha 64, r 24 / alpha 48)
RECIPE_DROPOUTS = (0.08, 0.15)  # DualFT, SingleFT
BATCH, TOKENS = 2, 5
FP32_TOL = 1e-5
# Half types: each side rounds a projection's output, the LoRA term and the sum (the MLP also e, g
# and h) to the dtype, so the two sides may differ by a few units of roundoff each, relative to the
# tensor's magnitude: 4 roundings on either side, 2^-8 (bf16) or 2^-11 (fp16) each.
UNIT_ROUNDOFF = {"bfloat16": 2.0**-8, "float16": 2.0**-11}
HALF_ROUNDINGS = 8
PROJS = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",), "mlp": ("gate_proj", "up_proj", "down_proj"),
         "rms_norm": ()}


def tolerance(dtype_name: str) -> dict:
    """``{"kind": "abs", "value": 1e-5}`` in fp32; relative to the reference's largest value in bf16/fp16."""
    if dtype_name == "float32":
        return {"kind": "abs", "value": FP32_TOL}
    return {"kind": "rel", "value": HALF_ROUNDINGS * UNIT_ROUNDOFF[dtype_name]}


def training_dtype_name(device: str) -> str:
    import torch

    if device == "cpu":
        return "float32"
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def _layer_config():
    from kitrec_fast.testkit.tiny_model import tiny_qwen3_config

    cfg = tiny_qwen3_config(num_layers=1)
    cfg._attn_implementation = "sdpa"
    return cfg


def _lora_config(dropout: float):
    from peft import LoraConfig

    return LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=dropout, bias="none",
                      target_modules=list(TARGETS))


def _to_4bit(linear, dtype, device):
    """The same weight as bitsandbytes' nf4 with double quantization (``load_in_4bit`` as the recipes load)."""
    import bitsandbytes as bnb

    q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=False, compute_dtype=dtype,
                          compress_statistics=True, quant_type="nf4", device="meta")
    q.weight = bnb.nn.Params4bit(linear.weight.data.to(dtype), requires_grad=False, compress_statistics=True,
                                 quant_type="nf4", module=q).to(device)
    return q


def _seed_lora_b(module, seed: int) -> None:
    # PEFT starts B at 0; a trained adapter's is not, and B = 0 would hide every A gradient and any
    # error in how B is scaled or laid out.
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def build_layer(device: str = "cpu", dtype_name: str = "float32", dropout: float = 0.0, four_bit: bool = False,
                seed: int = 0):
    """One tiny Qwen3 decoder layer with PEFT LoRA on its seven projections, in training mode."""
    import torch
    from peft import inject_adapter_in_model
    from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

    dtype = getattr(torch, dtype_name)
    torch.manual_seed(seed)
    layer = Qwen3DecoderLayer(_layer_config(), layer_idx=0)
    if four_bit:
        layer.to(dtype)
        for parent in (layer.self_attn, layer.mlp):
            for name in TARGETS:
                if hasattr(parent, name):
                    setattr(parent, name, _to_4bit(getattr(parent, name), dtype, device))
        layer.to(device)
    else:
        layer.to(device=device, dtype=dtype)
    inject_adapter_in_model(_lora_config(dropout), layer)
    for name, p in layer.named_parameters():
        p.requires_grad_("lora_" in name)
        if "lora_" in name:  # the adapter in the compute dtype, on the layer's device
            p.data = p.data.to(device=device, dtype=dtype)
    _seed_lora_b(layer, seed + 1)
    return layer.train()


def _lora_params(module, projs) -> dict:
    out = {}
    for proj in projs:
        m = getattr(module, proj)
        out[f"{proj}.A"] = m.lora_A["default"].weight
        out[f"{proj}.B"] = m.lora_B["default"].weight
    return out


def _as_tuple(y):
    return y if isinstance(y, tuple) else (y,)


def _side(fn, module, x, upstream, projs, seed: int) -> dict:
    import torch

    for p in module.parameters():
        p.grad = None
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)  # the same dropout masks on both sides
    ys = _as_tuple(fn(module, x))
    torch.autograd.backward(ys, upstream)
    # the fused backward writes dX into its input's storage: keep x.grad, never x
    return {"out": [y.detach().float() for y in ys], "dX": x.grad.detach().float(),
            **{k: p.grad.detach().float() for k, p in _lora_params(module, projs).items()}}


def _errors(fast: dict, ref: dict, tol: dict) -> dict:
    def err(a, b):
        a, b = (a if isinstance(a, list) else [a]), (b if isinstance(b, list) else [b])
        return max(float((x - y).abs().max()) for x, y in zip(a, b)), max(float(y.abs().max()) for y in b)

    out: dict = {"max_abs": {}, "scale": {}}
    for key in ref:
        if fast.get(key) is None:
            out["max_abs"][key] = float("inf")  # a LoRA weight the fused side never reached
            out["scale"][key] = 0.0
            continue
        out["max_abs"][key], out["scale"][key] = err(fast[key], ref[key])
    limit = {k: tol["value"] * (out["scale"][k] if tol["kind"] == "rel" else 1.0) for k in ref}
    out["ok"] = all(out["max_abs"][k] <= limit[k] for k in ref)
    out["worst"] = max(out["max_abs"].values())
    return out


def _peft(name: str):
    """PEFT's computation of the part each fused function replaces (the modules' own forwards)."""
    if name == "qkv":
        return lambda attn, x: (attn.q_proj(x), attn.k_proj(x), attn.v_proj(x))
    if name == "o":
        return lambda attn, x: attn.o_proj(x)
    return lambda module, x: type(module).forward(module, x)  # Qwen3MLP / Qwen3RMSNorm, not an installed one


def _inputs(layer, name: str, device: str, dtype, seed: int):
    import torch

    cfg = _layer_config()
    g = torch.Generator().manual_seed(seed)
    width = cfg.num_attention_heads * cfg.head_dim if name == "o" else cfg.hidden_size
    x = torch.randn(BATCH, TOKENS, width, generator=g)
    module = layer.self_attn if name in ("qkv", "o") else layer.mlp if name == "mlp" else layer.input_layernorm
    with torch.no_grad():
        shapes = [y.shape for y in _as_tuple(_peft(name)(module, x.to(device, dtype)))]
    upstream = tuple(torch.randn(s, generator=g).to(device, dtype) for s in shapes)
    return module, x.to(device, dtype), upstream


def compare_functions(layer, functions: dict, device: str, dtype_name: str, seed: int = 0,
                      names=("qkv", "o", "mlp", "rms_norm")) -> dict:
    """Per function: the fused one vs PEFT's modules on the same input, upstream gradient and dropout seed."""
    import torch

    dtype = getattr(torch, dtype_name)
    tol = tolerance(dtype_name)
    out = {}
    for i, name in enumerate(names):
        module, x, upstream = _inputs(layer, name, device, dtype, seed + 10 * i)
        fused = functions[name]
        if name == "rms_norm":
            fast_fn = lambda m, x: fused(m, x)  # noqa: E731
        else:
            fast_fn = fused
        t0 = time.perf_counter()
        try:
            fast = _side(fast_fn, module, x, upstream, PROJS[name], seed + 10 * i + 1)
        except Exception as exc:  # noqa: BLE001 - a kernel that cannot run here is the finding
            out[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300], "worst": float("inf"),
                         "max_abs": {}, "seconds": time.perf_counter() - t0}
            continue
        ref = _side(_peft(name), module, x, upstream, PROJS[name], seed + 10 * i + 1)
        out[name] = {**_errors(fast, ref, tol), "seconds": time.perf_counter() - t0}
    return out


def _unsloth():
    from kitrec_fast.backends import unsloth_backend

    return unsloth_backend


def check_layer(device: str = "cpu", dtype_name: str = "float32", dropout: float = 0.0, four_bit: bool = False,
                seed: int = 0, names=("qkv", "o", "mlp", "rms_norm")) -> dict:
    """The fused functions called directly on one layer (fp32 bases get nothing installed by Unsloth)."""
    layer = build_layer(device, dtype_name, dropout, four_bit, seed)
    res = compare_functions(layer, _unsloth().fused_lora_functions(), device, dtype_name, seed, names)
    weight = layer.self_attn.q_proj.base_layer.weight
    qs = getattr(weight, "quant_state", None)
    base = {"class": type(layer.self_attn.q_proj.base_layer).__name__, "quant_type": getattr(qs, "quant_type", None),
            "double_quant": bool(getattr(qs, "nested", False))}
    return {"device": device, "dtype": dtype_name, "dropout": dropout, "four_bit": four_bit, "base": base,
            "tolerance": tolerance(dtype_name), "functions": res, "ok": all(r["ok"] for r in res.values())}


def _allow_patch_peft_model():
    """``patch_peft_model`` insists that Unsloth replaced ``Trainer._inner_training_loop`` (its
    ``from_pretrained`` does); nothing trains here, so a same-named pass-through satisfies the check
    while it runs. Returns the restore."""
    from transformers.trainer import Trainer

    original = Trainer._inner_training_loop
    if original.__name__ == "_fast_inner_training_loop":
        return lambda: None

    def _fast_inner_training_loop(self, *args, **kwargs):
        return original(self, *args, **kwargs)

    Trainer._inner_training_loop = _fast_inner_training_loop

    def restore():
        Trainer._inner_training_loop = original

    return restore


def check_patched_model(device: str, dtype_name: str, dropout: float = 0.0, seed: int = 0,
                        names=("qkv", "o", "mlp")) -> dict:
    """The functions as Unsloth's ``patch_peft_model`` installs them on a tiny Qwen3 (16-bit bases only):
    the installed ``apply_qkv``/``apply_o``/MLP forward (those of ``names``) against the same modules'
    PEFT forwards, plus Unsloth's own count of what it installed."""
    import torch
    from peft import get_peft_model

    from kitrec_fast.testkit.tiny_model import build_tiny_qwen3

    ub = _unsloth()
    model = build_tiny_qwen3(seed=seed, num_layers=1).to(device=device, dtype=getattr(torch, dtype_name))
    model.max_seq_length = 64
    cfg = _lora_config(dropout)
    cfg.task_type = "CAUSAL_LM"
    model = get_peft_model(model, cfg)
    restore = _allow_patch_peft_model()
    try:
        model = ub.patch_peft_model(model)
    finally:
        restore()
    kernels = ub.count_fused_lora_kernels(model)
    layer = model.get_base_model().model.layers[0]
    for name, p in layer.named_parameters():
        if "lora_" in name:
            p.data = p.data.to(getattr(torch, dtype_name))
    _seed_lora_b(layer, seed + 1)
    layer.train()
    attn = layer.self_attn
    installed = {}
    if getattr(attn, "apply_qkv", None) is not None and kernels["qkv"]:
        installed["qkv"] = attn.apply_qkv
    if getattr(attn, "apply_o", None) is not None and kernels["o"]:
        installed["o"] = attn.apply_o
    if kernels["mlp"]:
        installed["mlp"] = lambda mlp, x: mlp(x)  # the MLP's installed forward
    installed = {k: v for k, v in installed.items() if k in names}
    res = compare_functions(layer, installed, device, dtype_name, seed, tuple(installed))
    return {"device": device, "dtype": dtype_name, "dropout": dropout, "kernels": kernels,
            "tolerance": tolerance(dtype_name), "functions": res,
            "ok": bool(installed) and kernels["total"] == 3 and all(r["ok"] for r in res.values())}


# --------------------------------------------------------------------------------------------------
# a whole training step on a tiny Qwen3: Unsloth's decoder layer and attention vs stock + PEFT


def build_model(seed: int = 0, layers: int = 1):
    import torch
    from peft import get_peft_model

    from kitrec_fast.testkit.tiny_model import build_tiny_qwen3

    cfg = _lora_config(0.0)
    cfg.task_type = "CAUSAL_LM"
    model = get_peft_model(build_tiny_qwen3(seed=seed, num_layers=layers), cfg)
    model.get_base_model().config._attn_implementation = "sdpa"
    _seed_lora_b(model, seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    ids = torch.randint(0, 4000, (BATCH, 12), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100  # a masked prompt, then the trained answer
    return model.train(), ids, labels


def _fast_layers(model) -> None:
    """Binds Unsloth's decoder-layer and Qwen3 attention forwards (fast RMSNorm, Q/K norm + RoPE
    kernels, its attention dispatch) and its fused LoRA functions to every layer of ``model``.

    Unsloth's model forward (``LlamaModel_fast_forward``) cannot run on CPU tensors (its RoPE cache is
    per CUDA device), so the stock model forward runs the layers and hands each one the position
    embeddings of its one sequence layout, as Unsloth's model forward does (``(tokens, head_dim)``).
    Position ids stay unset: with them Unsloth's RoPE kernel asks ``torch.cuda.current_device()``;
    without them it uses row i for token i, the same positions.
    """
    ub = _unsloth()
    layer_forward, attention_forward = ub.fast_layer_forwards()
    fns = ub.fused_lora_functions()

    def forward(self, hidden_states, attention_mask=None, position_ids=None, position_embeddings=None, **kw):
        cos, sin = position_embeddings
        return layer_forward(self, hidden_states, position_embeddings=(cos[0], sin[0]))[0]

    for layer in model.get_base_model().model.layers:
        layer.forward = types.MethodType(forward, layer)
        attn = layer.self_attn
        attn.forward = types.MethodType(attention_forward, attn)
        attn.apply_qkv, attn.apply_o = fns["qkv"], fns["o"]
        layer.mlp.forward = types.MethodType(fns["mlp"], layer.mlp)


def whole_step(fast: bool, seed: int = 0, layers: int = 1) -> dict:
    """One forward + backward of the tiny Qwen3 with LoRA: loss and every LoRA gradient (name -> list)."""
    model, ids, labels = build_model(seed, layers)
    if fast:
        _fast_layers(model)
    t0 = time.perf_counter()
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    grads = {n: p.grad.detach().float().flatten().tolist() for n, p in model.named_parameters() if p.grad is not None}
    attn = model.get_base_model().model.layers[0].self_attn
    return {"loss": float(out.loss.detach()), "attention_forward": getattr(attn.forward, "__name__", "?"),
            "grads": grads, "seconds": time.perf_counter() - t0}


def gradient_agreement(a: dict, b: dict) -> dict:
    """Cosine and relative norm gap of all LoRA gradients together, ``b`` against the reference ``a``."""
    import torch

    assert set(a) == set(b), sorted(set(a) ^ set(b))
    x = torch.tensor([v for k in sorted(a) for v in a[k]], dtype=torch.float64)
    y = torch.tensor([v for k in sorted(a) for v in b[k]], dtype=torch.float64)
    return {"cosine": float(torch.nn.functional.cosine_similarity(x, y, dim=0)),
            "norm_gap": float(abs(y.norm() - x.norm()) / x.norm()), "max_abs": float((x - y).abs().max()),
            "tensors": len(a)}


# --------------------------------------------------------------------------------------------------


def run(cases: str = "doctor") -> dict:
    """``doctor``: the functions on one layer (and, on a GPU, through the patched model); ``all`` adds
    the recipes' dropouts, 4-bit bases and a whole step (the tests' cases)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype_name = training_dtype_name(device)
    t0 = time.perf_counter()
    _unsloth()  # the import, timed apart from the checks
    out: dict = {"device": device, "dtype": dtype_name, "interpreter": os.environ.get("TRITON_INTERPRET") == "1",
                 "import_s": time.perf_counter() - t0}
    if device == "cpu" and not out["interpreter"]:
        raise SystemExit("error: on CPU the kernels run only under Triton's interpreter: set "
                         + " ".join(f"{k}={v}" for k, v in INTERPRETER_ENV.items()) + " before starting")
    out["layer"] = check_layer(device, dtype_name)
    if device == "cuda":
        try:
            out["patched"] = check_patched_model(device, dtype_name)
        except Exception as exc:  # noqa: BLE001 - Unsloth's own patching failing here is the finding
            out["patched"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300], "kernels": {},
                              "functions": {}}
    if cases == "all":
        out["dropout"] = {str(p): check_layer(device, dtype_name, dropout=p, names=("qkv", "o", "mlp"))
                          for p in RECIPE_DROPOUTS}
        # at a recipe's dropout: without one, the fused functions ask for the global dequantization
        # scratch, whose check calls torch.cuda.is_current_stream_capturing() (fails on CPU tensors)
        out["four_bit"] = check_layer(device, dtype_name, dropout=RECIPE_DROPOUTS[0], four_bit=True,
                                      names=("qkv", "o", "mlp"))
        out["whole_step"] = whole_step(fast=True)
        if device == "cpu":
            # The GPU's route through patch_peft_model (it installs nothing on fp32 bases), in bf16.
            # Only the functions without Triton kernels: the interpreter's bf16 arithmetic gives NaN in
            # the SwiGLU kernel and inf in the RMSNorm kernel (numpy has no bf16).
            out["patched"] = check_patched_model(device, "bfloat16", names=("qkv", "o"))
    out["wall_s"] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kitrec_fast.backends.fused_check",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", choices=("doctor", "all"), default="doctor")
    args = ap.parse_args(argv)
    print(json.dumps(run(args.cases)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
