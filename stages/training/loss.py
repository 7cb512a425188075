"""A training loss that sees the decisions, and a cheaper LM head on CPU.

A tool-calling answer turns on a handful of tokens: after ``<|ASSISTANT|>`` the first token says
*text or call* (``<|CONTENT|>`` / ``<|FUNCTION_CALL|>``), and after each call's arguments the next
one says *another call or done* (``<|FUNCTION_CALL|>`` / eos). In a packed stage-2 batch those are
well under 1 % of the trained tokens, so plain token-averaged cross-entropy spends almost nothing on
them. ``decision_weight`` multiplies the loss of exactly those positions:

- every label that is ``<|CONTENT|>`` or ``<|FUNCTION_CALL|>`` (the first decision of a turn, and
  "another call" after a call);
- the eos label that closes a turn of calls ("no more calls").

The eos that closes a text answer, and everything else, keeps weight 1. With ``decision_weight: 1``
(the original recipe) nothing changes; the loss is still divided by the number of trained tokens,
so the weight raises the decisions' share of the gradient without rescaling the rest.

``score_labelled_only``: trl's fused LM head projects only the labelled positions on GPUs, but on
CPU it projects every position (trl avoids recompiling tile shapes on some accelerators). On a CPU
most packed positions are prompt (system prompt, tools, user turns), and the 49k-wide projection
of each is a large share of a step; projecting only the labelled ones gives the same loss and
gradients for less work.
"""

from __future__ import annotations

from typing import Any

IGNORE_INDEX = -100


def decision_weights(labels: Any, call_id: int, text_id: int, eos_id: int, weight: float) -> Any:
    """Per-position weights for next-token ``labels`` (shape ``(batch, positions)``, -100 = ignored)."""
    import torch

    weights = torch.ones(labels.shape, dtype=torch.float32, device=labels.device)
    if weight == 1.0:
        return weights
    rows, cols = torch.nonzero((labels == call_id) | (labels == text_id) | (labels == eos_id), as_tuple=True)
    in_calls: dict[int, bool] = {}
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        token = int(labels[r, c])
        if token == eos_id:
            if in_calls.get(r):
                weights[r, c] = weight
            in_calls[r] = False
            continue
        weights[r, c] = weight
        in_calls[r] = token == call_id
    return weights


class _WeightedLogProbs:
    """Calls the model and scales the fused head's per-token log-probabilities by ``weights``.

    trl's ``SFTTrainer.compute_loss`` sums ``-log_probs`` and divides by the number of trained tokens;
    scaling them here weights the loss while its metrics (accuracy, entropy) stay unweighted.
    """

    def __init__(self, model: Any, weights: Any) -> None:
        self.model = model
        self.weights = weights

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.model(*args, **kwargs)
        if kwargs.get("fused_lm_head") and getattr(out, "log_probs", None) is not None:
            if out.log_probs.shape != self.weights.shape:
                raise RuntimeError(f"decision weights {tuple(self.weights.shape)} do not match the fused head's "
                                   f"log-probabilities {tuple(out.log_probs.shape)}")
            out.log_probs = out.log_probs * self.weights.to(out.log_probs.dtype)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


def make_trainer_class(decision_weight: float, token_ids: tuple[int, int, int]) -> type:
    """An ``SFTTrainer`` subclass whose training loss weights the decision tokens (see the module doc)."""
    from trl import SFTTrainer

    call_id, text_id, eos_id = token_ids

    class DecisionWeightedSFTTrainer(SFTTrainer):
        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            if decision_weight == 1.0 or not self.model.training or "shift_labels" in inputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            next_labels = inputs["labels"][:, 1:]
            weights = decision_weights(next_labels, call_id, text_id, eos_id, decision_weight)
            return super().compute_loss(_WeightedLogProbs(model, weights), inputs, return_outputs,
                                        num_items_in_batch)

    return DecisionWeightedSFTTrainer


def score_labelled_only_on_cpu() -> None:
    """Make trl's fused LM head project only labelled positions on CPU too (same loss, less work)."""
    import trl.trainer.utils as trl_utils

    original = trl_utils._use_triton
    if getattr(original, "_octupus_cpu_compact", False):
        return

    def use_compact(device: Any) -> bool:
        return device.type == "cpu" or original(device)

    use_compact._octupus_cpu_compact = True  # type: ignore[attr-defined]
    trl_utils._use_triton = use_compact
