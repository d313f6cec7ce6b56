"""The synthetic addition task: seeded generation, split disjointness, layout, tokenizer, checker."""

import random

import pytest

from dllm_kernels.addition.task import EOS, MASK, PAD, SYMBOLS, AdditionTask, Problem, build_tokenizer
from dllm_kernels.models import load_tokenizer

TASK = AdditionTask()
TOK = build_tokenizer()


def test_sampling_is_seeded():
    a = TASK.sample(50, rng=random.Random(7))
    assert a == TASK.sample(50, rng=random.Random(7))
    assert a != TASK.sample(50, rng=random.Random(8))
    assert TASK.heldout(20) == TASK.heldout(20)


def test_splits_are_disjoint():
    train = TASK.sample(2000, rng=random.Random(0))
    held = TASK.heldout(200)
    assert not any(TASK.is_heldout(p) for p in train)
    assert all(TASK.is_heldout(p) for p in held)
    assert not set(train) & set(held)


def test_operands_fit_and_lengths_vary():
    ps = TASK.sample(500, rng=random.Random(1))
    assert all(0 < p.a < 10**TASK.n_digits and 0 < p.b < 10**TASK.n_digits for p in ps)
    lengths = {len(str(p.a + p.b)) for p in ps}
    assert min(lengths) <= 3 and max(lengths) == TASK.n_digits + 1  # answers end in every answer block


def test_chain_prob_plants_propagating_positions():
    def propagate_fraction(task):
        hits = total = 0
        for p in task.sample(400, rng=random.Random(2)):
            a, b = str(p.a)[::-1], str(p.b)[::-1]
            for i in range(min(len(a), len(b))):
                hits += int(a[i]) + int(b[i]) == 9
                total += 1
        return hits / total

    assert 0.07 < propagate_fraction(AdditionTask(chain_prob=0.0)) < 0.13
    assert 0.3 < propagate_fraction(TASK) < 0.45


def test_layout_and_text():
    p = Problem(34, 89)
    assert TASK.prompt(p) == "43" + "0" * 14 + "+" + "98" + "0" * 14 + "="
    assert TASK.answer(p) == "321" + EOS
    assert TASK.target(p) == "321" + EOS * 29
    prompt, target = TASK.encode([p], TOK)
    assert prompt.shape == (1, TASK.prompt_length) and target.shape == (1, TASK.gen_length)
    assert target[0, :4].tolist() == [3, 2, 1, TOK.eos_id]
    assert (TASK.num_blocks, TASK.prompt_length) == (4, 34)


def test_bad_layouts_are_rejected():
    with pytest.raises(ValueError, match="multiple of block_length"):
        AdditionTask(gen_length=30, block_length=8)
    with pytest.raises(ValueError, match="n_digits"):
        AdditionTask(n_digits=16, gen_length=16, block_length=8)
    with pytest.raises(ValueError, match="split"):
        TASK.sample(1, rng=random.Random(0), split="test")


def test_tokenizer_round_trip(tmp_path):
    assert TOK.backend.get_vocab_size() == len(SYMBOLS) == 15
    assert TOK.encode("0123456789+=") == list(range(12))  # digit d is id d
    text = "0123456789+=" + PAD + EOS + MASK
    ids = TOK.encode(text)
    assert ids == list(range(15))
    assert TOK.decode(ids) == text
    assert TOK.decode(ids, skip_special_tokens=True) == "0123456789+="
    # the library's loader reads it back and finds the special ids by their LLaDA names
    TOK.backend.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path)
    assert loaded.encode(text) == ids
    assert (loaded.mask_id, loaded.eos_id) == (14, 13) == (TOK.mask_id, TOK.eos_id)
    with pytest.raises(Exception, match="UNK"):
        TOK.encode("12a")


def test_exact_match_scores_up_to_the_first_eos():
    eos = TOK.eos_id
    _, target = TASK.encode([Problem(34, 89), Problem(34, 89), Problem(34, 89), Problem(34, 89)], TOK)
    gen = target.clone()
    gen[1, 10] = 7  # after the first EOS: ignored
    gen[2, 1] = 0  # a wrong digit
    gen[3, 3] = 5  # EOS missing: the answer runs on
    assert TASK.exact_match(gen, target, eos).tolist() == [True, True, False, False]


def test_task_file_round_trip(tmp_path):
    task = AdditionTask(n_digits=8, gen_length=16, block_length=4, chain_prob=0.5)
    task.save(tmp_path / "task.json")
    assert AdditionTask.load(tmp_path / "task.json") == task
