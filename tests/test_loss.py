"""Chunked label-smoothed cross-entropy vs torch's F.cross_entropy on full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kitrec_fast.train.loss as loss_module
from kitrec_fast.train.loss import LossOutput, causal_lm_loss, reference_loss, shift_labels

B, T, H, V = 2, 37, 16, 101


def make_inputs(dtype: torch.dtype = torch.float64, ignored: bool = True, weight_grad: bool = False,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    weight = (torch.randn(V, H, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    weight.requires_grad_(weight_grad)
    labels = torch.randint(0, V, (B, T), generator=g)
    if ignored:
        # A masked prompt prefix per row plus scattered holes, as the SFT collator produces.
        labels[0, :11] = -100
        labels[1, :5] = -100
        labels[:, 20:23] = -100
    return hidden, weight, labels


def torch_ce(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, eps: float,
             reduction: str = "mean") -> torch.Tensor:
    """Written out independently of the module: explicit slice shift, fp32-or-better logits."""
    logits = (hidden @ weight.t())[:, :-1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits.reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100,
                           label_smoothing=eps, reduction=reduction)


def grads(loss: torch.Tensor, *params: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, params))


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.1])
@pytest.mark.parametrize("ignored", [False, True])
@pytest.mark.parametrize("chunk_size", [8, 7, 1024])  # divides / does not divide / one chunk
@pytest.mark.parametrize("weight_grad", [False, True])
def test_matches_cross_entropy_value_and_grad(eps: float, ignored: bool, chunk_size: int,
                                              weight_grad: bool) -> None:
    hidden, weight, labels = make_inputs(ignored=ignored, weight_grad=weight_grad)
    n_trained = int((labels[:, 1:] != -100).sum())
    if not ignored:
        assert n_trained % 8 == 0 and n_trained % 7 != 0  # 72 tokens: the chunk sizes mean something
    params = (hidden, weight) if weight_grad else (hidden,)

    ref = torch_ce(hidden, weight, labels, eps)
    out = causal_lm_loss(hidden, weight, labels, label_smoothing=eps, chunk_size=chunk_size)
    assert isinstance(out, LossOutput)
    torch.testing.assert_close(out.loss, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads(out.loss, *params), grads(ref, *params)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_float32_matches(eps: float) -> None:
    hidden, weight, labels = make_inputs(torch.float32, weight_grad=True)
    ref = torch_ce(hidden, weight, labels, eps)
    out = causal_lm_loss(hidden, weight, labels, label_smoothing=eps, chunk_size=10)
    torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads(out.loss, hidden, weight), grads(ref, hidden, weight)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("vocab_block", [16384, 32])  # one slice / several, last one ragged
def test_bfloat16_matches(eps: float, vocab_block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loss_module, "_VOCAB_BLOCK", vocab_block)
    hidden, weight, labels = make_inputs(torch.bfloat16, weight_grad=True)
    ref = torch_ce(hidden, weight, labels, eps)
    out = causal_lm_loss(hidden, weight, labels, label_smoothing=eps, chunk_size=10)
    assert out.loss.dtype == torch.float32  # softmax and loss in fp32 even for bf16 inputs
    torch.testing.assert_close(out.loss, ref, rtol=1e-3, atol=1e-3)
    (gh, gw), (rh, rw) = grads(out.loss, hidden, weight), grads(ref, hidden, weight)
    assert gh.dtype == torch.bfloat16 and gw.dtype == torch.bfloat16
    # bf16 has an 8-bit mantissa; the weight grad is also summed over chunks in bf16.
    torch.testing.assert_close(gh.float(), rh.float(), rtol=2e-2, atol=2e-4)
    torch.testing.assert_close(gw.float(), rw.float(), rtol=3e-2, atol=5e-4)


def test_mixed_dtypes_and_autocast() -> None:
    """fp32 hidden states with a float64 head compute in the head's dtype; autocast is ignored."""
    hidden, weight, labels = make_inputs(weight_grad=True)
    hidden32 = hidden.detach().float().requires_grad_()
    ref = torch_ce(hidden32.double(), weight, labels, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = causal_lm_loss(hidden32, weight, labels, label_smoothing=0.1, chunk_size=9)
    assert out.loss.dtype == torch.float64
    torch.testing.assert_close(out.loss, ref, rtol=1e-12, atol=1e-12)
    (gh, gw), (rh, rw) = grads(out.loss, hidden32, weight), grads(ref, hidden32, weight)
    assert gh.dtype == torch.float32
    torch.testing.assert_close(gh, rh)
    torch.testing.assert_close(gw, rw, rtol=1e-10, atol=1e-12)


def test_frozen_weight_gets_no_grad_and_is_not_needed() -> None:
    hidden, weight, labels = make_inputs()
    out = causal_lm_loss(hidden, weight, labels, label_smoothing=0.1)
    out.loss.backward()
    assert weight.grad is None and hidden.grad is not None


def test_ignored_positions_get_zero_grad() -> None:
    hidden, weight, labels = make_inputs()
    causal_lm_loss(hidden, weight, labels, label_smoothing=0.1, chunk_size=7).loss.backward()
    trained = shift_labels(labels) != -100
    assert torch.all(hidden.grad[~trained] == 0)
    assert torch.all(hidden.grad[trained].abs().sum(-1) > 0)
    assert torch.all(hidden.grad[:, -1] == 0)  # the last position has nothing to predict


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_num_items_in_batch_gradient_accumulation(eps: float) -> None:
    """Two micro-batches, each divided by the token count of the whole batch, sum to the full-batch
    mean -- what the Trainer relies on when it passes num_items_in_batch."""
    hidden, weight, labels = make_inputs()
    full = torch_ce(hidden, weight, labels, eps)
    full_grad = grads(full, hidden)[0]

    num_items = int((labels[:, 1:] != -100).sum())
    total = torch.zeros((), dtype=torch.float64)
    for i in range(B):
        # Tensor and int forms of num_items_in_batch are both accepted.
        n = torch.tensor(num_items) if i == 0 else num_items
        out = causal_lm_loss(hidden[i:i + 1], weight, labels[i:i + 1], label_smoothing=eps,
                             num_items_in_batch=n, chunk_size=6)
        out.loss.backward()
        total = total + out.loss.detach()
    torch.testing.assert_close(total, full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hidden.grad, full_grad, rtol=1e-10, atol=1e-12)

    ref = reference_loss(hidden[:1], weight, labels[:1], label_smoothing=eps, num_items_in_batch=num_items)
    got = causal_lm_loss(hidden[:1], weight, labels[:1], label_smoothing=eps, num_items_in_batch=num_items)
    torch.testing.assert_close(got.loss, ref.loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.nll, ref.nll, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("eps", [0.05, 0.1])
def test_nll_is_the_unsmoothed_loss(eps: float) -> None:
    hidden, weight, labels = make_inputs()
    out = causal_lm_loss(hidden, weight, labels, label_smoothing=eps, chunk_size=9)
    plain = causal_lm_loss(hidden, weight, labels, label_smoothing=0.0, chunk_size=9)
    assert not out.nll.requires_grad
    torch.testing.assert_close(out.nll, plain.loss.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.nll, torch_ce(hidden, weight, labels, 0.0).detach())
    assert out.loss.item() > out.nll.item()  # smoothing adds the (larger) uniform term


def test_no_grad_eval_path_matches() -> None:
    hidden, weight, labels = make_inputs()
    with torch.no_grad():
        out = causal_lm_loss(hidden, weight, labels, label_smoothing=0.1, chunk_size=5)
        ref = reference_loss(hidden, weight, labels, label_smoothing=0.1)
    assert not out.loss.requires_grad
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.nll, ref.nll, rtol=1e-12, atol=1e-12)


def test_bias_value_and_grad() -> None:
    hidden, weight, labels = make_inputs(weight_grad=True)
    bias = torch.randn(V, dtype=torch.float64, requires_grad=True)
    logits = F.linear(hidden, weight, bias)[:, :-1].reshape(-1, V)
    ref = F.cross_entropy(logits, labels[:, 1:].reshape(-1), label_smoothing=0.1)
    out = causal_lm_loss(hidden, weight, labels, label_smoothing=0.1, lm_head_bias=bias, chunk_size=9)
    torch.testing.assert_close(out.loss, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads(out.loss, hidden, weight, bias), grads(ref, hidden, weight, bias)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_all_ignored_batch_is_zero_not_nan() -> None:
    hidden, weight, _ = make_inputs(weight_grad=True)
    labels = torch.full((B, T), -100)
    out = causal_lm_loss(hidden, weight, labels, label_smoothing=0.1)
    assert out.loss.item() == 0.0 and out.nll.item() == 0.0
    out.loss.backward()
    assert torch.all(hidden.grad == 0) and torch.all(weight.grad == 0)
    # With a whole-batch denominator the empty micro-batch simply contributes nothing.
    out = causal_lm_loss(hidden, weight, labels, label_smoothing=0.1, num_items_in_batch=17)
    assert out.loss.item() == 0.0


def test_retain_graph_backward_twice_and_grad_output_scaling() -> None:
    hidden, weight, labels = make_inputs()
    out = causal_lm_loss(hidden, weight, labels, label_smoothing=0.1)
    (3.0 * out.loss).backward(retain_graph=True)
    first = hidden.grad.clone()
    out.loss.backward()
    torch.testing.assert_close(hidden.grad, first * 4.0 / 3.0)
    torch.testing.assert_close(first, 3.0 * grads(torch_ce(hidden, weight, labels, 0.1), hidden)[0])


def test_rejects_bad_shapes() -> None:
    hidden, weight, labels = make_inputs()
    with pytest.raises(ValueError):
        causal_lm_loss(hidden, weight, labels[:, :-1])
    with pytest.raises(ValueError):
        causal_lm_loss(hidden, weight, labels, chunk_size=0)


def test_tiny_qwen3_decoder_grads_match_full_logits() -> None:
    """End to end through a real (tiny, random) Qwen3 with the real 151,936-token vocabulary."""
    from kitrec_fast.testkit.tiny_model import build_tiny_qwen3

    model = build_tiny_qwen3(seed=0).double()
    model.lm_head.weight.requires_grad_(False)  # as under LoRA
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, model.config.vocab_size, (2, 19), generator=g)
    labels = input_ids.clone()
    labels[0, :7] = -100
    labels[1, :4] = -100
    probes = [model.model.layers[-1].mlp.down_proj.weight, model.model.layers[0].self_attn.q_proj.weight,
              model.model.norm.weight]

    hidden = model.model(input_ids=input_ids).last_hidden_state
    out = causal_lm_loss(hidden, model.lm_head.weight, labels, label_smoothing=0.1, chunk_size=8)
    got = grads(out.loss, *probes)

    logits = model(input_ids=input_ids).logits
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                          labels[:, 1:].reshape(-1), ignore_index=-100, label_smoothing=0.1)
    want = grads(ref, *probes)

    torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(got, want):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)
