"""The synthetic task of the project's tiny masked-diffusion model: long addition, written least
significant digit first.

Canvas (one fixed layout for every example, so a batch needs no padding)::

    prompt  a0 a1 ... a15 + b0 b1 ... b15 =          34 tokens: both operands zero-padded to 16
                                                     digits, least significant digit first
    answer  s0 s1 ... sk EOS EOS ... EOS             gen_length 32 = 4 blocks of 8: the sum, least
                                                     significant digit first, without leading
                                                     zeros, then EOS up to the end (as LLaDA's
                                                     SFT data: EOS is an ordinary, predicted token)

e.g. ``4 3 0 ... 0 + 9 8 0 ... 0 =`` -> ``3 2 1 <|endoftext|> ...`` (34 + 89 = 123).

Why this task shows the parallelism / accuracy trade-off. Digit ``s_i = (a_i + b_i + c_i) mod 10``
with the carry ``c_i`` into position i:

- where ``a_{i-1} + b_{i-1} != 9`` the carry is settled by those two digits alone (>= 10: carry,
  <= 8: none), so ``s_i`` is a function of four prompt digits: such tokens can be committed
  together in one step, in any order;
- where ``a_{i-1} + b_{i-1} == 9`` the carry propagates (``c_i = c_{i-1}``) and is only known from
  further down the chain, i.e. cheaply once ``s_{i-1}`` is decoded (``c_i = 1`` iff ``s_{i-1} =
  0`` there). Committing such a digit before its predecessor is a guess;
- the answer's length (where EOS starts) is ``max(len a, len b)`` plus the final carry, so EOS
  placement depends on the carry chain too, while the EOS tail after it is trivially parallel.

The generator plants propagating positions (``b_i = 9 - a_i`` with probability ``chain_prob``) so
that the carry into 23% of the sum's digits comes from a propagating position (9% with uniform
digits). Operand lengths are uniform in ``1..n_digits``, so answers end in any of the first
three blocks and early exit at EOS matters.

Splits. A problem is held out iff ``crc32(prompt) % heldout_mod == 0``; the training sampler
rejects those, the held-out sampler keeps only those, so the two never share a problem (for any
sizes and seeds).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import random
import zlib
from dataclasses import dataclass

import tokenizers
import torch
from tokenizers import Regex, decoders, pre_tokenizers

from ..models.tokenizer import Tokenizer

# LLaDA's names for EOS and MASK, so that the library's tokenizer loader finds their ids
PAD, EOS, MASK = "<|pad|>", "<|endoftext|>", "<|mdm_mask|>"
# token id == digit value for 0..9
SYMBOLS = [*"0123456789", "+", "=", PAD, EOS, MASK]


def build_tokenizer() -> Tokenizer:
    """Character-level tokenizer over :data:`SYMBOLS` (15 ids; digit d has id d): a
    ``tokenizers`` WordLevel model behind the library's :class:`~dllm_kernels.models.Tokenizer`.
    Special tokens are matched whole; any other character is an error (no unknown token)."""
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel({s: i for i, s in enumerate(SYMBOLS)}))
    backend.add_special_tokens([PAD, EOS, MASK])
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    backend.decoder = decoders.Fuse()
    return Tokenizer(backend, {s: SYMBOLS.index(s) for s in (PAD, EOS, MASK)})


@dataclass(frozen=True)
class Problem:
    a: int
    b: int


@dataclass(frozen=True)
class AdditionTask:
    """Task parameters and the canvas layout the evaluation uses (see the module docstring)."""

    n_digits: int = 16
    gen_length: int = 32
    block_length: int = 8
    chain_prob: float = 0.3
    heldout_mod: int = 32

    def __post_init__(self):
        if self.gen_length % self.block_length:
            raise ValueError(f"gen_length ({self.gen_length}) must be a multiple of block_length ({self.block_length})")
        if self.gen_length < self.n_digits + 2:
            raise ValueError(f"gen_length ({self.gen_length}) must hold n_digits + 1 sum digits and an EOS")

    @property
    def prompt_length(self) -> int:
        return 2 * self.n_digits + 2

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    # -- text ---------------------------------------------------------------------------------
    def prompt(self, p: Problem) -> str:
        if not (0 <= p.a < 10**self.n_digits and 0 <= p.b < 10**self.n_digits):
            raise ValueError(f"AdditionTask: operands must have at most {self.n_digits} digits, got {p}")
        digits = lambda n: str(n).zfill(self.n_digits)[::-1]  # noqa: E731
        return f"{digits(p.a)}+{digits(p.b)}="

    def answer(self, p: Problem) -> str:
        """The sum, least significant digit first, then one EOS (the canvas repeats it to the end)."""
        return str(p.a + p.b)[::-1] + EOS

    def target(self, p: Problem) -> str:
        """The whole generation region: answer, then EOS up to ``gen_length`` tokens."""
        return str(p.a + p.b)[::-1] + EOS * (self.gen_length - len(str(p.a + p.b)))

    def is_heldout(self, p: Problem) -> bool:
        return zlib.crc32(self.prompt(p).encode()) % self.heldout_mod == 0

    # -- sampling -----------------------------------------------------------------------------
    def _draw(self, rng: random.Random) -> Problem:
        n = self.n_digits
        la, lb = rng.randint(1, n), rng.randint(1, n)
        a = [rng.randrange(10) for _ in range(la - 1)] + [rng.randrange(1, 10)]
        b = [rng.randrange(10) for _ in range(lb - 1)] + [rng.randrange(1, 10)]
        for i in range(min(la, lb)):  # plant propagating positions, keeping b's top digit non-zero
            if rng.random() < self.chain_prob and (i < lb - 1 or a[i] != 9):
                b[i] = 9 - a[i]
        value = lambda ds: int("".join(map(str, ds[::-1])))  # noqa: E731
        return Problem(value(a), value(b))

    def sample(self, n: int, *, rng: random.Random, split: str = "train") -> list[Problem]:
        """``n`` problems from ``split`` ("train" or "heldout") drawn with ``rng``."""
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        want = split == "heldout"
        out = []
        while len(out) < n:
            p = self._draw(rng)
            if self.is_heldout(p) == want:
                out.append(p)
        return out

    def heldout(self, n: int, *, seed: int = 1234) -> list[Problem]:
        """The seeded held-out set (disjoint from every training draw)."""
        return self.sample(n, rng=random.Random(seed), split="heldout")

    # -- tensors ------------------------------------------------------------------------------
    def encode(self, problems: list[Problem], tokenizer: Tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prompt_ids [N, prompt_length], target_ids [N, gen_length])`` int64."""
        prompts = [tokenizer.encode(self.prompt(p)) for p in problems]
        targets = [tokenizer.encode(self.target(p)) for p in problems]
        return torch.tensor(prompts, dtype=torch.long), torch.tensor(targets, dtype=torch.long)

    def exact_match(self, generated: torch.Tensor, target: torch.Tensor, eos_id: int) -> torch.Tensor:
        """Per row: the generation matches the answer up to and including its first EOS (what
        follows the first EOS is ignored, as an evaluation that stops at EOS does).

        ``generated`` and ``target`` are ``[N, gen_length]`` token ids; returns bool ``[N]``."""
        answer_len = (target == eos_id).int().argmax(-1)  # index of the target's first EOS
        scored = torch.arange(target.shape[-1], device=target.device) <= answer_len[:, None]
        return ((generated == target) | ~scored).all(-1)

    # -- files --------------------------------------------------------------------------------
    def save(self, path) -> None:
        pathlib.Path(path).write_text(json.dumps({"task": "addition", **dataclasses.asdict(self)}, indent=2) + "\n")

    @classmethod
    def load(cls, path) -> AdditionTask:
        d = json.loads(pathlib.Path(path).read_text())
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})
