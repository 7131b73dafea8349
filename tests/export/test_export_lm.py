"""The LM graph with its KV cache generates exactly what PyTorch generates, padded or not."""

from __future__ import annotations

import numpy as np
import torch
from support.export_helpers import Exported

from export.runtime import greedy
from export.verify import left_pad


def test_greedy_32_tokens_equals_torch(lm: Exported) -> None:
    prompt = torch.randint(0, lm.cfg.vocab_size, (1, 6), generator=torch.Generator().manual_seed(3))
    want = lm.model.greedy(prompt, 32)[:, prompt.shape[1] :]
    got = greedy(lm.sess, prompt.numpy(), 32)
    np.testing.assert_array_equal(got, want.numpy())


def test_padded_batch_equals_each_unpadded(lm: Exported) -> None:
    gen = torch.Generator().manual_seed(4)
    prompts = [
        torch.randint(0, lm.cfg.vocab_size, (n,), generator=gen).tolist() for n in (3, 11, 7)
    ]
    ids, mask = left_pad(prompts)
    batched = greedy(lm.sess, ids.numpy(), 12, mask.numpy())
    for row, prompt in zip(batched, prompts, strict=False):
        alone = greedy(lm.sess, np.array([prompt]), 12)[0]
        np.testing.assert_array_equal(row, alone)
        np.testing.assert_array_equal(
            row, lm.model.greedy(torch.tensor([prompt]), 12)[0, len(prompt) :]
        )
