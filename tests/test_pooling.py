"""grace.pooling against a per-row, per-token float64 loop."""

import pytest
import torch
from transformers import AutoTokenizer

from grace.pooling import pool_hidden_states, pooling_skip, system_prefix_length
from grace.prompts import SYSTEM_PROMPT, chat_messages


def oracle_pool(hidden, mask, prefix_len, normalize):
    rows = []
    for h_row, m_row in zip(hidden.to(torch.float64).tolist(), mask.tolist()):
        skip = prefix_len if sum(m_row) >= prefix_len else 0  # the reference skips no token of a shorter row
        seen, total, count = 0, [0.0] * len(h_row[0]), 0
        for h_tok, valid in zip(h_row, m_row):
            if not valid:
                continue
            seen += 1
            if seen <= skip:
                continue
            total = [a + b for a, b in zip(total, h_tok)]
            count += 1
        mean = [a / count for a in total] if count else total
        norm = sum(a * a for a in mean) ** 0.5
        rows.append([a / norm for a in mean] if normalize and norm > 0 else mean)
    return torch.tensor(rows, dtype=torch.float64)


def random_masks(batch, length, generator):
    """Left-padded prompts followed by right-padded responses, like verl's prompt+response sequences."""
    mask = torch.zeros(batch, length, dtype=torch.long)
    for row in range(batch):
        prompt = int(torch.randint(0, length // 2 + 1, (1,), generator=generator))
        response = int(torch.randint(0, length // 2 + 1, (1,), generator=generator))
        mask[row, length // 2 - prompt : length // 2 + response] = 1
    return mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("prefix_len", [0, 3, 40])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("shape", [(1, 6, 3), (7, 20, 16), (16, 64, 32)])
def test_pooling_equals_loop(dtype, prefix_len, normalize, shape):
    g = torch.Generator().manual_seed(sum(shape) + prefix_len)
    hidden = (torch.randn(*shape, generator=g) * 3).to(dtype)
    mask = random_masks(shape[0], shape[1], g)
    got = pool_hidden_states(hidden, mask, prefix_len=prefix_len, normalize=normalize)
    assert got.dtype == torch.float32 and got.shape == (shape[0], shape[2])
    torch.testing.assert_close(got.double(), oracle_pool(hidden, mask, prefix_len, normalize), rtol=1e-5, atol=1e-5)


def test_row_without_pooled_tokens_is_zero_not_nan():
    hidden = torch.randn(3, 5, 4)
    mask = torch.tensor([[0, 0, 0, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    got = pool_hidden_states(hidden, mask, prefix_len=3)
    assert torch.equal(got[0], torch.zeros(4)) and torch.equal(got[1], torch.zeros(4))
    assert torch.isfinite(got).all() and abs(got[2].norm().item() - 1) < 1e-6


def test_row_shorter_than_the_prefix_pools_all_its_tokens():
    hidden = torch.randn(2, 5, 4)
    mask = torch.tensor([[0, 0, 0, 1, 1], [0, 1, 1, 1, 1]])
    got = pool_hidden_states(hidden, mask, prefix_len=3, normalize=False)
    torch.testing.assert_close(got[0], hidden[0, 3:].mean(0))  # 2 valid tokens < 3: all pooled
    torch.testing.assert_close(got[1], hidden[1, 4])  # 4 valid tokens: the first 3 skipped


def test_pooling_span_selects_positions_one_by_one():
    """verl rows (left-padded prompt, right-padded response); hidden state t is the unit vector e_t, so the
    un-normalised mean is nonzero exactly at the pooled positions."""
    prompt_width, response_width, prefix = 6, 4, 2
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 0, 0],    # prompt 4 tokens, response 2
                         [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],    # prompt 6, response 4
                         [0, 0, 0, 1, 1, 1, 0, 0, 0, 0]])   # prompt 3, empty response
    hidden = torch.eye(prompt_width + response_width).expand(3, -1, -1)
    prompt_lengths = mask[:, :prompt_width].sum(-1)
    expected = {"prompt+response": [[4, 5, 6, 7], [2, 3, 4, 5, 6, 7, 8, 9], [5]],
                "response": [[6, 7], [6, 7, 8, 9], []]}
    for span, positions in expected.items():
        skip = pooling_skip(prompt_lengths, span, prefix)
        pooled = pool_hidden_states(hidden, mask, prefix_len=skip, normalize=False)
        for row, row_positions in enumerate(positions):
            assert torch.nonzero(pooled[row]).flatten().tolist() == row_positions, (span, row)
    with pytest.raises(ValueError, match="pooling span"):
        pooling_skip(prompt_lengths, "prompt", prefix)


def test_per_row_skip_equals_pooling_each_row_alone():
    g = torch.Generator().manual_seed(3)
    hidden, mask = torch.randn(5, 12, 8, generator=g), random_masks(5, 12, g)
    skip = torch.tensor([0, 1, 4, 2, 7])
    rows = [pool_hidden_states(hidden[i : i + 1], mask[i : i + 1], prefix_len=int(skip[i])) for i in range(5)]
    torch.testing.assert_close(pool_hidden_states(hidden, mask, prefix_len=skip), torch.cat(rows))


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError, match="expected hidden"):
        pool_hidden_states(torch.randn(2, 5, 4), torch.ones(2, 4))
    with pytest.raises(ValueError, match="prefix_len"):
        pool_hidden_states(torch.randn(2, 5, 4), torch.ones(2, 5), prefix_len=-1)
    with pytest.raises(ValueError, match="one per row"):
        pool_hidden_states(torch.randn(2, 5, 4), torch.ones(2, 5), prefix_len=torch.tensor([1, 2, 3]))


def test_system_prefix_is_everything_before_the_user_text(tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    prefix = system_prefix_length(tokenizer)
    text = "Marie Curie discovered polonium."
    ids = tokenizer.apply_chat_template(chat_messages(text), add_generation_prompt=True)
    assert tokenizer.decode(ids[:prefix]) == f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
    assert tokenizer.decode(ids[prefix:]).startswith(text)


def test_system_prefix_without_chat_template_uses_plain_layout(tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    tokenizer.chat_template = None
    prefix = system_prefix_length(tokenizer, "Summarise.")
    ids = tokenizer("Summarise.\n\nSome user text", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids[:prefix]) == "Summarise.\n\n"
