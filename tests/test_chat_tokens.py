"""End of turn and padding read from the chat template: what TRL's eos masking and batched generation need."""

import pytest

from grpo_helpers import chat_tokens, data, tiny


@pytest.fixture()
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_llama31_template_ends_a_turn_with_eot(tokenizer):
    assert chat_tokens.end_of_turn_token(tokenizer) == tiny.EOT
    assert tokenizer.convert_tokens_to_ids(tiny.EOT) in chat_tokens.stop_token_ids(tokenizer)


def test_an_already_correct_tokenizer_is_left_alone(tokenizer):
    before = (tokenizer.eos_token, tokenizer.pad_token, list(tokenizer.model_input_names))
    assert chat_tokens.align_special_tokens(tokenizer) == []
    assert (tokenizer.eos_token, tokenizer.pad_token, list(tokenizer.model_input_names)) == before


def test_wrong_eos_and_pad_equal_to_eos_are_fixed(tokenizer):
    # What a converted checkpoint can look like: eos names the token that OPENS a turn, pad = eos.
    tokenizer.eos_token = tiny.BOS
    tokenizer.pad_token = tiny.BOS
    tokenizer.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    changes = chat_tokens.align_special_tokens(tokenizer)
    assert len(changes) == 3
    assert tokenizer.eos_token == tiny.EOT
    assert tokenizer.pad_token == tiny.PAD and tokenizer.pad_token_id not in chat_tokens.stop_token_ids(tokenizer)
    assert "token_type_ids" not in tokenizer("hello")


def test_pad_never_sits_inside_a_chat_prompt(tokenizer):
    prompt_ids = tokenizer.apply_chat_template(data.format_prompt("What is 2+2?"), add_generation_prompt=True)
    assert tokenizer.convert_tokens_to_ids(chat_tokens.safe_pad_token(tokenizer)) not in prompt_ids
    tokenizer.pad_token = tiny.EOT  # in every prompt and the stop token: never a safe pad
    assert chat_tokens.safe_pad_token(tokenizer, chat_tokens.stop_token_ids(tokenizer)) != tiny.EOT


def test_no_chat_template_means_no_end_of_turn(tokenizer):
    tokenizer.chat_template = None
    assert chat_tokens.end_of_turn_token(tokenizer) is None
    assert chat_tokens.stop_token_ids(tokenizer) == [tokenizer.eos_token_id]


def test_generation_stops_at_the_end_of_turn_even_when_the_model_config_says_otherwise(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo_helpers.generation import SamplingSettings, generate_completions

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(tiny.EOS_TEXT)  # not the end of turn
    tokenizer.pad_token = None  # batched generation still pads (and gives the tokenizer back unchanged)
    assert tokenizer.convert_tokens_to_ids(tiny.EOT) in chat_tokens.stop_token_ids(tokenizer, model)
    prompts = [data.format_prompt("What is 2+2?"), data.format_prompt("Ava has 3 apples and buys 4 more. How many?")]
    for group in generate_completions(model, tokenizer, prompts, SamplingSettings(max_new_tokens=48, num_samples=2,
                                                                                   temperature=1.0)):
        for completion in group:
            assert completion.truncated or completion.stop_token in (tiny.EOT, tiny.EOS_TEXT)
            assert len(completion.token_ids) == completion.num_tokens
            assert tiny.EOT not in tokenizer.decode(list(completion.token_ids), skip_special_tokens=False)
    assert tokenizer.pad_token is None and tokenizer.padding_side == "left"
