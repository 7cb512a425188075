"""The decision-weighted loss: which positions it weights, and that it changes the loss there only."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from stages.training.loss import decision_weights, make_trainer_class, score_labelled_only_on_cpu  # noqa: E402
from toolcall.tokens import CONTENT, FUNCTION_CALL  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

CALL, TEXT, EOS = 1, 5, 2


def test_weights_mark_decisions_and_the_end_of_call_turns_only() -> None:
    # text turn (5 .. eos), call turn with two calls (1 .. 1 .. eos), then a text turn again
    labels = torch.tensor([[-100, TEXT, 7, 8, EOS, -100, CALL, 9, 9, CALL, 9, EOS, -100, TEXT, 3, EOS]])
    w = decision_weights(labels, CALL, TEXT, EOS, 4.0)
    expected = [1, 4, 1, 1, 1, 1, 4, 1, 1, 4, 1, 4, 1, 4, 1, 1]
    assert w[0].tolist() == expected
    assert decision_weights(labels, CALL, TEXT, EOS, 1.0).tolist() == [[1.0] * labels.shape[1]]


def test_rows_of_a_batch_are_tracked_separately() -> None:
    labels = torch.tensor([[CALL, 9, EOS, TEXT, EOS], [TEXT, 9, EOS, CALL, EOS]])
    w = decision_weights(labels, CALL, TEXT, EOS, 3.0)
    assert w.tolist() == [[3, 1, 3, 3, 1], [3, 1, 1, 3, 3]]


def _trainer(tiny_model_dir: Path, tmp_path: Path, weight: float):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ids = tokenizer.convert_tokens_to_ids([FUNCTION_CALL, CONTENT])
    cls = make_trainer_class(weight, (ids[0], ids[1], tokenizer.eos_token_id))
    args = SFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_length=64, packing=False)
    dataset = Dataset.from_dict({"input_ids": [[1, 2, 3]], "labels": [[1, 2, 3]]})
    return cls(model=model, args=args, train_dataset=dataset, processing_class=tokenizer), tokenizer, ids


def test_weighted_loss_differs_from_plain_loss_by_the_decision_positions_only(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    trainer, tokenizer, (call_id, text_id) = _trainer(tiny_model_dir, tmp_path, 5.0)
    eos = tokenizer.eos_token_id
    body = tokenizer("abc def", add_special_tokens=False)["input_ids"]
    ids = [7, 8, call_id, *body, call_id, *body, eos, 9, text_id, *body, eos]
    labels = [-100, -100, *ids[2:]]
    inputs = {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
              "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    trainer.model.train()
    weighted = trainer.compute_loss(trainer.model, dict(inputs)).item()

    plain_trainer, _, _ = _trainer(tiny_model_dir, tmp_path / "plain", 1.0)
    plain_trainer.model.load_state_dict(trainer.model.state_dict())
    plain_trainer.model.train()
    plain = plain_trainer.compute_loss(plain_trainer.model, dict(inputs)).item()

    # Per-token losses from a plain forward pass: the difference must be (w - 1) x the loss of
    # exactly the decision positions (both call tokens, the eos closing the calls, the text token).
    with torch.no_grad():
        logits = trainer.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[0, :-1]
    nll = torch.nn.functional.cross_entropy(logits, inputs["labels"][0, 1:], reduction="none",
                                            ignore_index=-100)
    next_labels = labels[1:]
    decision = [i for i, t in enumerate(next_labels) if t in (call_id, text_id)]
    decision.append(next_labels.index(eos))  # the first eos closes the turn of calls; the second a text
    trained = sum(1 for t in next_labels if t != -100)
    expected = plain + 4.0 * float(nll[decision].sum()) / trained
    assert weighted == pytest.approx(expected, rel=1e-4)
    assert weighted > plain


def test_labelled_only_projection_gives_the_same_loss_on_cpu(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    ids = torch.randint(0, 200, (1, 40))
    labels = ids.clone()
    labels[:, :25] = -100
    import trl.trainer.utils as trl_utils

    original = trl_utils._use_triton
    try:
        full = model(input_ids=ids, labels=labels, fused_lm_head=True)
        score_labelled_only_on_cpu()
        assert trl_utils._use_triton(torch.device("cpu")) is True
        compact = model(input_ids=ids, labels=labels, fused_lm_head=True)
    finally:
        trl_utils._use_triton = original
    assert torch.allclose(full.log_probs, compact.log_probs, atol=1e-5)
    assert torch.equal(full.label_mask, compact.label_mask)
