"""HFModelAdapter: a Hugging-Face-style callable (``model(input_ids).logits``, no cache) decodes
every uncached policy exactly as the native protocol model does; cached policies are refused."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from dllm_kernels import generate
from dllm_kernels.models import CachedDiffusionModel, DiffusionLM, DiffusionModel, HFModelAdapter, tiny


class HFStyle:
    """Only what the LLaDA/Dream remote code offers: ``__call__(input_ids).logits`` and a config
    with the Hugging Face names. The logits are the raw (unshifted) ones, like Dream's model."""

    def __init__(self, native: DiffusionLM):
        c = native.config
        raw = dataclasses.replace(c, logit_shift=False)
        self.net = DiffusionLM(raw, backend=native.backend, attn_impl=native.attn_impl)
        self.net.load_state_dict(native.state_dict())
        self.net.eval()
        self.config = SimpleNamespace(
            vocab_size=c.vocab_size,
            mask_token_id=c.mask_id,
            eos_token_id=c.eos_id,
            pad_token_id=None,
            max_position_embeddings=c.max_seq_len,
        )
        self.calls = []

    def __call__(self, input_ids):
        self.calls.append(tuple(input_ids.shape))
        return SimpleNamespace(logits=self.net(input_ids))


def native_model(logit_shift=False):
    torch.manual_seed(0)
    m = DiffusionLM(tiny(vocab_size=32, logit_shift=logit_shift), backend="reference", attn_impl="sdpa")
    with torch.no_grad():
        m.lm_head.weight.mul_(7.0)  # sharp predictions: thresholds are crossed, blocks take several steps
    return m.eval()


UNCACHED = [
    ("vanilla", {}),
    ("vanilla", {"steps_per_block": 4}),
    ("fast_dllm", {"cache": "none"}),
    ("r2", {"cache": "none"}),
    ("d3llm", {"cache": "none"}),
]
PROMPTS = [[3, 4, 5], [7, 1, 2, 9, 4, 4, 2], [5] * 12]


@pytest.mark.parametrize("logit_shift", [False, True], ids=["llada", "dream-shift"])
@pytest.mark.parametrize("policy, kw", UNCACHED, ids=[f"{p}-{'-'.join(map(str, k.values()))}" for p, k in UNCACHED])
def test_adapter_decodes_like_the_native_model(policy, kw, logit_shift):
    native = native_model(logit_shift)
    hf = HFStyle(native)
    adapted = HFModelAdapter(hf, logit_shift=logit_shift)
    args = dict(policy=policy, gen_length=16, block_length=8, backend="reference", **kw)
    want = generate(native, PROMPTS, **args)
    got = generate(adapted, PROMPTS, **args)
    assert torch.equal(got.tokens, want.tokens)
    assert torch.equal(got.nfe, want.nfe)
    assert torch.equal(got.commit_step, want.commit_step)
    # the padding is cut off: the model only ever sees each prompt's own length + the region
    assert {n for _, n in hf.calls} <= {len(p) + 16 for p in PROMPTS}


def test_adapter_reads_the_hf_config_and_satisfies_the_protocol():
    adapted = HFModelAdapter(HFStyle(native_model()))
    c = adapted.config
    assert (c.vocab_size, c.mask_id, c.eos_id, c.pad_id, c.max_seq_len) == (32, 31, 30, None, 512)
    assert isinstance(adapted, DiffusionModel) and not isinstance(adapted, CachedDiffusionModel)
    assert isinstance(native_model(), CachedDiffusionModel)
    assert adapted.device == torch.device("cpu")


@pytest.mark.parametrize(
    "policy, kw", [("fast_dllm", {}), ("fast_dllm", {"cache": "dual"}), ("streaming", {}), ("r2", {}), ("d3llm", {})]
)
def test_cached_policies_are_refused_naming_cache(policy, kw):
    adapted = HFModelAdapter(HFStyle(native_model()))
    with pytest.raises(ValueError, match="cache"):
        generate(adapted, PROMPTS, policy=policy, gen_length=16, block_length=8, backend="reference", **kw)


def test_adapter_needs_the_special_ids():
    class Bare:
        config = SimpleNamespace(vocab_size=32)

        def __call__(self, input_ids):
            raise AssertionError("not called")

    bare = Bare()
    with pytest.raises(ValueError, match="mask_id, eos_id"):
        HFModelAdapter(bare)
    assert HFModelAdapter(bare, mask_id=31, eos_id=30).config.mask_id == 31
    with pytest.raises(TypeError, match="mask_token"):
        HFModelAdapter(bare, mask_token=31)
