"""Test doubles shared by several test files."""

from __future__ import annotations

from grpo_helpers.generation import Completion


class FakeGenerator:
    """Stands in for generate_completions: records every call, returns canned replies per prompt."""

    def __init__(self, reply_for):
        self.calls, self.reply_for = [], reply_for

    def __call__(self, model, tokenizer, prompts, settings, batch_size=16, lora_request=None, use_adapter=True):
        self.calls.append({"prompts": [list(p) for p in prompts], "settings": settings, "batch_size": batch_size,
                           "lora_request": lora_request, "use_adapter": use_adapter})
        side = "trained" if use_adapter else "base"
        return [[Completion(self.reply_for(side, p[-1]["content"], i), 5, False) for i in range(settings.num_samples)]
                for p in prompts]
