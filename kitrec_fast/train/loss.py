"""Memory-efficient, label-smoothed causal-LM cross-entropy computed in chunks of tokens.

Why this exists: with label smoothing on, neither Unsloth nor TRL 1.15 uses a fused/chunked loss, so
the full ``[B*T, V]`` logits get materialised (for 2 x 5,120 tokens and Qwen3's 151,936-token
vocabulary that is 1.56e9 values per logits-sized tensor, and autograd keeps several alive).
:func:`causal_lm_loss` never builds logits for more than ``chunk_size`` tokens at a time.

Design -- "gradient in forward" rather than "recompute in backward":
    The loss is the last node of the graph and is almost always back-propagated immediately, so the
    forward pass computes, per chunk, the fp32 logits, the loss terms and right away the gradient
    with respect to that chunk's hidden states (and the LM-head weight/bias only when they require
    grad -- under LoRA the head is frozen and that matmul is skipped). Only those gradients are
    kept; ``backward`` just scales them by ``grad_output``. Compared with recomputing the logits in
    backward this costs no extra LM-head matmul (recompute would add a third ``N x H x V`` matmul,
    +50% loss FLOPs with a frozen head), and the extra memory is only the ``[B*T, H]`` hidden-state
    gradient, which autograd would have to hold during backward anyway. The price: when the caller
    needs grads, the forward does the backward work even if backward is never called. That is why
    the gradient work is skipped entirely when nothing requires grad (eval, ``torch.no_grad``).

Peak extra memory is about ``chunk_size * V * 4`` bytes (one fp32 logits chunk, turned in place
into its own gradient) plus the ``[B*T, H]`` hidden-state gradient; for bf16/fp16 inputs the
up/down-casts go through vocabulary slices of 16,384 so their transients stay small. With the
default ``chunk_size=1024``, V=151,936, H=5,120 and 2 x 5,120 tokens that is ~0.6 GB of logits
plus 0.1 GB (bf16) / 0.2 GB (fp32) of hidden-state gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LossOutput", "causal_lm_loss", "reference_loss", "shift_labels"]

# Vocabulary slice for bf16/fp16 <-> fp32 casts: big enough for efficient matmuls, small enough
# (1024 x 16384 x 2 bytes = 32 MB) not to matter next to the fp32 logits chunk.
_VOCAB_BLOCK = 16384


class LossOutput(NamedTuple):
    """``loss``: the training objective (label-smoothed when ``label_smoothing > 0``), differentiable;
    the published KitREC eval losses (e.g. 1.5953) are this smoothed value, as the Trainer reported it.
    ``nll``: plain cross-entropy (no smoothing) over the same tokens and denominator, detached."""

    loss: Tensor
    nll: Tensor


def shift_labels(labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Labels aligned with the hidden states: position t is trained to predict ``labels[t + 1]``.

    Padding the end with ``ignore_index`` (as transformers' ForCausalLMLoss does) rather than slicing
    the hidden states keeps ``hidden_states.view(B*T, H)`` a free view instead of a copy.
    """
    return F.pad(labels[..., 1:], (0, 1), value=ignore_index)


def _denominator(num_items_in_batch: int | Tensor | None, n_tokens: int, device: torch.device) -> Tensor:
    if num_items_in_batch is None:
        # max(.,1): a batch with no trained tokens gives loss 0 instead of 0/0 = NaN.
        return torch.tensor(float(max(n_tokens, 1)), device=device)
    if isinstance(num_items_in_batch, Tensor):
        return num_items_in_batch.detach().to(device=device, dtype=torch.float32).reshape(())
    return torch.tensor(float(num_items_in_batch), device=device)


def _chunked(*args, **kwargs) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    # Autocast would turn the fp32 logits chunk into bf16 behind our back, and the in-place softmax
    # and gradient arithmetic below rely on it being fp32; dtypes are handled explicitly instead.
    device_type = args[0].device.type
    with torch.autocast(device_type=device_type, enabled=False):
        return _chunked_impl(*args, **kwargs)


def _chunked_impl(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    flat_labels: Tensor,
    rows: Tensor,
    denom: Tensor,
    eps: float,
    chunk_size: int,
    need_hidden_grad: bool,
    need_weight_grad: bool,
    need_bias_grad: bool,
    vocab_block: int | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Sums of smoothed loss and plain NLL over ``rows`` of ``hidden`` ([M, H]), plus gradients of
    ``smoothed_sum / denom`` when asked for. Everything in here runs without autograd."""
    vocab = weight.shape[0]
    device = hidden.device
    vocab_block = vocab_block or _VOCAB_BLOCK
    # fp32 for bf16/fp16/fp32 heads; float64 (tests) stays float64.
    acc = torch.promote_types(weight.dtype, torch.float32)
    loss_sum = torch.zeros((), dtype=acc, device=device)
    nll_sum = torch.zeros((), dtype=acc, device=device)
    grad_hidden = torch.zeros_like(hidden) if need_hidden_grad else None
    # The weight gradient is accumulated in the weight's own dtype: an fp32 buffer for a bf16 head
    # would be V*H*4 bytes (3.1 GB for Qwen3-14B), more than the whole loss is meant to add.
    grad_weight = torch.zeros_like(weight) if need_weight_grad else None
    grad_bias = torch.zeros(vocab, dtype=acc, device=device) if need_bias_grad else None
    inv_denom = denom.to(acc).reciprocal()
    need_grad = need_hidden_grad or need_weight_grad or need_bias_grad

    for start in range(0, rows.numel(), chunk_size):
        idx = rows[start:start + chunk_size]
        # The matmul runs in the head's dtype: casting one chunk of hidden states is cheap, casting
        # the [V, H] head would copy it (e.g. an fp32 head after prepare_model_for_kbit_training).
        h = hidden.index_select(0, idx).to(weight.dtype)
        y = flat_labels.index_select(0, idx).unsqueeze(1)

        # The matmul runs in the input dtype (as the model's lm_head would); the softmax in fp32.
        if weight.dtype == acc:
            z = F.linear(h, weight, bias)
        else:
            # Upcasting a whole bf16 chunk would briefly hold it twice (+50% peak); slices of the
            # vocabulary keep that transient small.
            z = torch.empty(h.shape[0], vocab, dtype=acc, device=device)
            for v0 in range(0, vocab, vocab_block):
                v1 = min(v0 + vocab_block, vocab)
                z[:, v0:v1] = F.linear(h, weight[v0:v1], None if bias is None else bias[v0:v1])

        target = z.gather(1, y).squeeze(1)
        total = z.sum(1)
        # logsumexp by hand so the exponentials overwrite z in place: torch.logsumexp would allocate
        # another [chunk, V] fp32 temporary.
        zmax = z.amax(1, keepdim=True)
        z.sub_(zmax).exp_()
        sumexp = z.sum(1, keepdim=True)
        lse = (zmax + sumexp.log()).squeeze(1)

        nll = lse - target
        # torch's smoothing term: mean over the vocabulary of -log p_j = lse - mean_j z_j.
        smooth = lse - total / vocab
        loss_sum += ((1.0 - eps) * nll + eps * smooth).sum()
        nll_sum += nll.sum()

        if not need_grad:
            del z
            continue

        # d(loss_tok)/dz = softmax(z) - (1-eps) * onehot(y) - eps / V, all over the denominator.
        g = z.div_(sumexp)
        if eps:
            g.sub_(eps / vocab)
        g.scatter_add_(1, y, torch.full_like(y, -(1.0 - eps), dtype=g.dtype))
        g.mul_(inv_denom)
        del z

        if need_bias_grad:
            grad_bias += g.sum(0)
        if g.dtype == weight.dtype:
            if need_hidden_grad:
                grad_hidden.index_copy_(0, idx, (g @ weight).to(hidden.dtype))
            if need_weight_grad:
                grad_weight.addmm_(g.t(), h)
        else:
            # Same reason as above: downcast the logits gradient one vocabulary slice at a time.
            # The hidden-state grad is summed over slices in fp32, so it is no less precise than
            # one bf16 matmul.
            gh = torch.zeros(h.shape, dtype=acc, device=device) if need_hidden_grad else None
            for v0 in range(0, vocab, vocab_block):
                v1 = min(v0 + vocab_block, vocab)
                g_low = g[:, v0:v1].to(weight.dtype)
                if gh is not None:
                    gh += g_low @ weight[v0:v1]
                if need_weight_grad:
                    grad_weight[v0:v1].addmm_(g_low.t(), h)
                del g_low
            if gh is not None:
                grad_hidden.index_copy_(0, idx, gh.to(hidden.dtype))
                del gh
        del g

    if grad_bias is not None and bias is not None:
        grad_bias = grad_bias.to(bias.dtype)
    return loss_sum, nll_sum, grad_hidden, grad_weight, grad_bias


class _ChunkedSmoothedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, flat_labels: Tensor,
                rows: Tensor, denom: Tensor, eps: float, chunk_size: int,
                need_h: bool, need_w: bool, need_b: bool) -> tuple[Tensor, Tensor]:
        loss_sum, nll_sum, gh, gw, gb = _chunked(hidden, weight, bias, flat_labels, rows, denom, eps,
                                                 chunk_size, need_h, need_w, need_b)
        ctx.save_for_backward(gh, gw, gb)
        nll = nll_sum / denom
        ctx.mark_non_differentiable(nll)
        return loss_sum / denom, nll

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: Tensor, _grad_nll: Tensor | None):
        gh, gw, gb = ctx.saved_tensors

        # Out of place so that a retain_graph=True second backward still sees the unscaled grads.
        def scale(g: Tensor | None) -> Tensor | None:
            return None if g is None else g * grad_loss.to(g.dtype)

        return scale(gh), scale(gw), scale(gb), None, None, None, None, None, None, None, None


def causal_lm_loss(
    hidden_states: Tensor,
    lm_head_weight: Tensor,
    labels: Tensor,
    *,
    label_smoothing: float = 0.0,
    num_items_in_batch: int | Tensor | None = None,
    chunk_size: int = 1024,
    ignore_index: int = -100,
    lm_head_bias: Tensor | None = None,
) -> LossOutput:
    """Label-smoothed causal-LM cross-entropy from the final hidden states, without full logits.

    Args:
        hidden_states: ``[B, T, H]`` output of the decoder's final norm (bf16, fp16 or fp32).
        lm_head_weight: ``[V, H]``; frozen under LoRA, in which case its gradient is not computed.
        labels: ``[B, T]`` *unshifted* token ids (position t predicts ``labels[t+1]``, as in
            transformers' ForCausalLMLoss); ``ignore_index`` marks untrained positions.
        label_smoothing: eps; the per-token loss is ``(1-eps)*nll + eps*mean_j(-log p_j)``, exactly
            ``F.cross_entropy(..., label_smoothing=eps)``.
        num_items_in_batch: the denominator. The Trainer passes the number of trained tokens in the
            whole gradient-accumulated batch, so summing micro-batch losses gives the full-batch mean.
            ``None`` means the number of trained tokens in this call.
        chunk_size: trained tokens per LM-head chunk; peak extra memory ~ ``chunk_size * V * 4`` bytes.
        ignore_index: label value that is not trained on.
        lm_head_bias: optional ``[V]`` bias (Qwen3 has none).

    Returns:
        ``LossOutput(loss, nll)``: ``loss`` is the smoothed sum over trained tokens divided by the
        denominator (differentiable); ``nll`` is plain cross-entropy under the same denominator
        (detached). With no trained tokens and no ``num_items_in_batch`` both are 0, not NaN.
    """
    if hidden_states.dim() != 3 or labels.shape != hidden_states.shape[:2]:
        raise ValueError(f"expected hidden_states [B,T,H] and labels [B,T], got "
                         f"{tuple(hidden_states.shape)} and {tuple(labels.shape)}")
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError("label_smoothing must be in [0, 1]")

    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    flat_labels = shift_labels(labels.to(hidden.device), ignore_index).reshape(-1)
    # Only trained positions are ever multiplied by the LM head: masked prompt tokens cost nothing.
    rows = (flat_labels != ignore_index).nonzero().squeeze(1)
    # Ignored positions may carry ids outside the vocabulary (e.g. -100); gathering only ``rows``
    # means they are never used as indices.
    denom = _denominator(num_items_in_batch, rows.numel(), hidden.device)
    eps = float(label_smoothing)

    grad_on = torch.is_grad_enabled()
    need_h = grad_on and hidden.requires_grad
    need_w = grad_on and lm_head_weight.requires_grad
    need_b = grad_on and lm_head_bias is not None and lm_head_bias.requires_grad
    if not (need_h or need_w or need_b):
        loss_sum, nll_sum, *_ = _chunked(hidden.detach(), lm_head_weight.detach(),
                                         None if lm_head_bias is None else lm_head_bias.detach(),
                                         flat_labels, rows, denom, eps, chunk_size, False, False, False)
        return LossOutput(loss_sum / denom, nll_sum / denom)

    loss, nll = _ChunkedSmoothedCE.apply(hidden, lm_head_weight, lm_head_bias, flat_labels, rows,
                                         denom, eps, chunk_size, need_h, need_w, need_b)
    return LossOutput(loss, nll)


def reference_loss(
    hidden_states: Tensor,
    lm_head_weight: Tensor,
    labels: Tensor,
    *,
    label_smoothing: float = 0.0,
    num_items_in_batch: int | Tensor | None = None,
    ignore_index: int = -100,
    lm_head_bias: Tensor | None = None,
) -> LossOutput:
    """The straightforward path (full ``[B*T, V]`` logits, upcast to fp32, ``F.cross_entropy``), as
    transformers does it with smoothing on. For tests and the memory benchmark only."""
    logits = F.linear(hidden_states, lm_head_weight, lm_head_bias)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    logits = logits.reshape(-1, logits.shape[-1])
    flat_labels = shift_labels(labels.to(logits.device), ignore_index).reshape(-1)
    if num_items_in_batch is None:
        loss = F.cross_entropy(logits, flat_labels, ignore_index=ignore_index,
                               label_smoothing=label_smoothing)
        with torch.no_grad():
            nll = F.cross_entropy(logits, flat_labels, ignore_index=ignore_index)
        return LossOutput(loss, nll)
    denom = _denominator(num_items_in_batch, 0, logits.device)
    loss = F.cross_entropy(logits, flat_labels, ignore_index=ignore_index,
                           label_smoothing=label_smoothing, reduction="sum") / denom
    with torch.no_grad():
        nll = F.cross_entropy(logits, flat_labels, ignore_index=ignore_index, reduction="sum") / denom
    return LossOutput(loss, nll)
