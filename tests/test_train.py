"""LLaDA's training objective and the training loop (tiny shapes, a few steps)."""

import math
import random

import torch

from dllm_kernels.addition.task import AdditionTask, build_tokenizer
from dllm_kernels.addition.train import TrainConfig, masked_diffusion_loss, tiny_addition_config, train
from dllm_kernels.models import DiffusionLM, ModelConfig

TASK = AdditionTask(n_digits=4, gen_length=8, block_length=4)
TOK = build_tokenizer()


def small_config() -> ModelConfig:
    c = tiny_addition_config(TOK)
    return ModelConfig(**{**c.__dict__, "d_model": 32, "n_layers": 1, "head_dim": 16, "ffn_dim": 64})


class Uniform(torch.nn.Module):
    """Zero logits everywhere (CE = log V at every position); checks it never sees a masked prompt."""

    def __init__(self, prompt):
        super().__init__()
        self.config = small_config()
        self.prompt = prompt
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, logits_index):
        assert torch.equal(x[:, : self.prompt.shape[1]], self.prompt)
        return self.w + torch.zeros(*logits_index.shape, self.config.vocab_size)


def test_loss_is_llada_sft_objective():
    prompt, target = TASK.encode(TASK.sample(16, rng=random.Random(0)), TOK)
    loss = masked_diffusion_loss(Uniform(prompt), prompt, target, generator=torch.Generator().manual_seed(3))
    # replay the draws: t ~ U(0, 1) per row, p = (1 - eps) t + eps, token masked iff u < p
    g = torch.Generator().manual_seed(3)
    p = (1 - 1e-3) * torch.rand(16, generator=g) + 1e-3
    masked = torch.rand(16, TASK.gen_length, generator=g) < p[:, None]
    expected = math.log(15) * (masked / p[:, None]).sum() / (16 * TASK.gen_length)
    torch.testing.assert_close(loss, expected.float())


def test_training_lowers_the_loss_and_is_deterministic():
    cfg = TrainConfig(steps=30, batch_size=32, lr=3e-3, warmup_steps=5, seed=1)
    prompt, target = TASK.encode(TASK.sample(64, rng=random.Random(9)), TOK)

    def fixed_loss(model):
        with torch.no_grad():
            return masked_diffusion_loss(model, prompt, target, generator=torch.Generator().manual_seed(0)).item()

    torch.manual_seed(cfg.seed)  # train() initialises from this seed
    untrained = fixed_loss(DiffusionLM(small_config(), attn_impl="sdpa").eval())
    m1, hist = train(TASK, cfg, model_config=small_config(), log_every=10, log=lambda s: None)
    m2, _ = train(TASK, cfg, model_config=small_config(), log_every=10, log=lambda s: None)
    assert fixed_loss(m1) < 0.8 * untrained
    assert [h["step"] for h in hist] == [10, 20, 30]
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(v1, v2), k
