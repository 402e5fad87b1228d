from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedmrg.report.losses import distillation_losses, language_model_loss, target_positions
from fedmrg.report.prompt_layout import IGNORE_INDEX, layout_inputs, text_prompt_ids
from fedmrg.report.state_tokens import StateTokenEmbedding


def test_layout_masks_prompt_and_padding_out_of_labels():
    b, n, d = 2, 3, 5
    visual = torch.randn(b, n, d)
    states = torch.tensor([[10, 11, 12], [13, 10, 10]])  # 3 "state token" ids for brevity
    prompt = text_prompt_ids(b, 1, states, visual.device)
    assert prompt.tolist() == [[10, 11, 12, 1], [13, 10, 10, 1]]
    report = torch.tensor([[5, 6, 2], [7, 2, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    table = torch.randn(20, d)
    inputs = layout_inputs(visual, prompt, lambda ids: table[ids], report, mask)
    assert inputs.prompt_length == n + 4
    assert inputs.inputs_embeds.shape == (b, n + 4 + 3, d)
    assert torch.equal(inputs.inputs_embeds[:, :n], visual)
    assert torch.equal(inputs.inputs_embeds[0, n : n + 4], table[prompt[0]])
    assert inputs.labels[:, : n + 4].eq(IGNORE_INDEX).all()
    assert inputs.labels[0, n + 4 :].tolist() == [5, 6, 2]
    assert inputs.labels[1, n + 4 :].tolist() == [7, 2, IGNORE_INDEX]
    assert inputs.attention_mask[1].tolist() == [1] * (n + 4) + [1, 1, 0]
    # the BOS position (last prompt position) is the first one that predicts a report token
    positions = target_positions(inputs.labels)
    assert positions[0].nonzero().flatten().tolist() == [n + 3, n + 4, n + 5]
    assert positions[1].nonzero().flatten().tolist() == [n + 3, n + 4]


def test_visual_tokens_after_the_prompt_sit_between_prompt_and_bos():
    b, n, d = 2, 3, 5
    visual = torch.randn(b, n, d)
    prompt = text_prompt_ids(b, 1, torch.tensor([[10, 11, 12], [13, 10, 10]]), visual.device)
    report, mask = torch.tensor([[5, 6, 2], [7, 2, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]])
    table = torch.randn(20, d)
    before = layout_inputs(visual, prompt, lambda ids: table[ids], report, mask)
    after = layout_inputs(visual, prompt, lambda ids: table[ids], report, mask, visual_position="after_prompt")
    assert torch.equal(after.inputs_embeds[0, :3], table[prompt[0, :3]])
    assert torch.equal(after.inputs_embeds[:, 3 : 3 + n], visual)
    assert torch.equal(after.inputs_embeds[1, 3 + n], table[1])  # BOS right after the visual tokens
    # same length, labels and mask: only the order of the non-scored positions changes
    assert after.prompt_length == before.prompt_length
    assert torch.equal(after.labels, before.labels) and torch.equal(after.attention_mask, before.attention_mask)
    assert torch.equal(after.inputs_embeds[:, n + 4 :], before.inputs_embeds[:, n + 4 :])
    without_prompt = text_prompt_ids(b, 1, None, visual.device)  # baselines: [BOS] only, the order is unchanged
    assert torch.equal(
        layout_inputs(visual, without_prompt, lambda ids: table[ids], visual_position="after_prompt").inputs_embeds,
        layout_inputs(visual, without_prompt, lambda ids: table[ids]).inputs_embeds,
    )
    with pytest.raises(ValueError, match="visual_position"):
        layout_inputs(visual, prompt, lambda ids: table[ids], visual_position="middle")


def test_lm_loss_is_mean_ce_over_report_tokens():
    logits = torch.randn(1, 4, 7)
    labels = torch.tensor([[IGNORE_INDEX, 3, 5, IGNORE_INDEX]])
    expected = (
        F.cross_entropy(logits[0, 0:1], torch.tensor([3])) + F.cross_entropy(logits[0, 1:2], torch.tensor([5]))
    ) / 2
    assert language_model_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_distillation_is_zero_for_identical_outputs_and_matches_formula():
    logits, hidden = torch.randn(2, 3, 6), torch.randn(2, 3, 4)
    positions = torch.tensor([[True, True, False], [True, False, False]])
    cos, kl = distillation_losses(logits, hidden, logits.clone(), hidden.clone(), positions)
    assert cos.item() == pytest.approx(0.0, abs=1e-6) and kl.item() == pytest.approx(0.0, abs=1e-6)
    t_logits, t_hidden = torch.randn(2, 3, 6), torch.randn(2, 3, 4)
    cos, kl = distillation_losses(logits, hidden, t_logits, t_hidden, positions, temperature=2.0)
    s, t = hidden[positions], t_hidden[positions]
    assert cos.item() == pytest.approx((1 - F.cosine_similarity(s, t)).mean().item(), rel=1e-5)
    p_t = (t_logits[positions] / 2).softmax(-1)
    manual_kl = (p_t * (p_t.log() - (logits[positions] / 2).log_softmax(-1))).sum(-1).mean() * 4
    assert kl.item() == pytest.approx(manual_kl.item(), rel=1e-5)


def test_state_token_embedding_overrides_only_its_rows():
    base = torch.randn(10, 4)
    st = StateTokenEmbedding([6, 7, 8, 9], base)
    ids = torch.tensor([[1, 6, 9, 2, 6]])
    out = st(ids, base[ids])
    assert torch.equal(out[0, 0], base[1]) and torch.equal(out[0, 3], base[2])
    assert torch.equal(out[0, 1], st.weight[0]) and torch.equal(out[0, 2], st.weight[3])
    assert torch.equal(out[0, 4], st.weight[0])
    out.sum().backward()
    assert st.weight.grad[[0, 3]].abs().sum() > 0 and st.weight.grad[[1, 2]].abs().sum() == 0
    with pytest.raises(ValueError, match="`init` must have shape"):
        StateTokenEmbedding([6, 7, 8, 9], base, torch.zeros(3, 4))


def test_state_rows_start_from_the_decoder_embedding_of_the_state_words(make_config):
    from fedmrg.report.diagnosis_prompt import STATE_WORDS
    from fedmrg.report.model import FedMRGModel

    torch.manual_seed(0)
    model = FedMRGModel(make_config())
    table = model.lm.get_input_embeddings().weight.detach().float()
    rows = model.state_tokens.weight.detach()
    for k, word in enumerate(STATE_WORDS):
        ids = model.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        assert torch.allclose(rows[k], table[ids].mean(0))
    assert torch.cdist(rows, rows).add(torch.eye(4)).min() > 1e-3


def test_diagnosis_loss_adds_the_bias_to_the_logits():
    from fedmrg.report.diagnosis import diagnosis_loss

    g = torch.Generator().manual_seed(0)
    logits, states = torch.randn(3, 14, 4, generator=g), torch.randint(0, 4, (3, 14), generator=g)
    bias = torch.randn(14, 4, generator=g)
    assert diagnosis_loss(logits, states, bias) == pytest.approx(float(diagnosis_loss(logits + bias, states)))
    assert diagnosis_loss(logits, states, bias) != pytest.approx(float(diagnosis_loss(logits, states)))


def test_untrained_diagnosis_head_says_blank_with_the_initial_probability():
    from fedmrg.observations import State
    from fedmrg.report.diagnosis import INITIAL_BLANK_PROBABILITY, DiagnosisHead

    torch.manual_seed(0)
    head = DiagnosisHead(64)
    probs = head(torch.zeros(2, 64)).softmax(-1)
    torch.testing.assert_close(probs[..., int(State.BLANK)], torch.full((2, 14), INITIAL_BLANK_PROBABILITY))
    assert (head(torch.rand(8, 64)).argmax(-1) == int(State.BLANK)).all()  # small random features: still blank


def test_diagnosis_f1_scores_the_heads_positive_states():
    from fedmrg.observations import OBSERVATIONS
    from fedmrg.report.evaluation import diagnosis_f1

    def row(pred_pos: set[int], ref_pos: set[int]) -> dict:
        states = {o: {"state": "positive" if j in pred_pos else "blank"} for j, o in enumerate(OBSERVATIONS)}
        return {"states": states, "reference_states": ["positive" if j in ref_pos else "negative" for j in range(14)]}

    # per study: F1 1 (exact), 2/3 (one of two found), 0 (wrong one); mean 5/9
    rows = [row({2}, {2}), row({2}, {2, 5}), row({7}, {3})]
    assert diagnosis_f1(rows) == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert diagnosis_f1([{"states": None, "reference_states": ["blank"] * 14}]) is None


def test_weighted_lm_loss_is_the_weighted_mean_per_token_and_per_study():
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[IGNORE_INDEX, 3, 5, 1, IGNORE_INDEX], [IGNORE_INDEX, 2, 2, IGNORE_INDEX, IGNORE_INDEX]])
    weights = torch.tensor([[1.0, 1.0, 4.0, 1.0, 1.0], [1.0, 2.0, 1.0, 1.0, 1.0]])
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX, reduction="none")
    w = weights[:, 1:] * (labels[:, 1:] != IGNORE_INDEX)
    expected = (ce * w).sum() / w.sum()
    assert language_model_loss(logits, labels, weights).item() == pytest.approx(expected.item(), rel=1e-6)
    assert language_model_loss(logits, labels, torch.ones(2, 5)).item() == pytest.approx(
        language_model_loss(logits, labels).item(), rel=1e-6
    )
    per_study = language_model_loss(logits, labels, weights, per_sample=True)
    assert per_study.shape == (2,)
    assert per_study[1].item() == pytest.approx(((ce[1] * w[1]).sum() / w[1].sum()).item(), rel=1e-6)
    # a weight on a token moves the loss toward that token's cross-entropy
    heavier = weights.clone()
    heavier[0, 2] = 100.0
    assert language_model_loss(logits, labels, heavier).item() == pytest.approx(ce[0, 1].item(), rel=0.1)
