"""AUP (hand-worked cases), evaluate() checked against generate(), the sweep / AUP / report plumbing."""

import pytest

from dllm_kernels import generate
from dllm_kernels.addition.evaluate import aup, aup_table, evaluate, sweep, write_results


def test_aup_single_point_is_the_accuracy():
    assert aup([(1.0, 80.0)], y_max=90.0) == 80.0


def test_aup_two_points_by_hand():
    # W(80) = 1 (y = y_max); W(78) = exp(-3 (1 - 78/80)) = exp(-0.075) = 0.9277434863
    # AUP = 1 * 80 + 1/2 (3 - 1) (78 * 0.9277434863 + 80 * 1) = 80 + 72.3639919 + 80
    assert aup([(3.0, 78.0), (1.0, 80.0)], y_max=80.0) == pytest.approx(232.3639919, abs=1e-6)


def test_aup_drops_points_below_y1_minus_5():
    # sorted: (1, 80) (2, 76) (3, 79) (4, 74); y_1 = 80, so (4, 74) < 75 is dropped.
    # W(76) = exp(-0.15) = 0.8607079764, W(79) = exp(-0.0375) = 0.9631944177
    # AUP = 80 + 1/2 (76 W(76) + 80) + 1/2 (79 W(79) + 76 W(76))
    #     = 80 + 1/2 (65.4138062 + 80) + 1/2 (76.0923590 + 65.4138062) = 223.4599857
    pts = [(1.0, 80.0), (4.0, 74.0), (2.0, 76.0), (3.0, 79.0)]
    assert aup(pts, y_max=80.0) == pytest.approx(223.4599857, abs=1e-6)
    assert aup(pts, y_max=80.0) == aup(pts[:1] + pts[2:], y_max=80.0)


def test_aup_weight_is_capped_at_one_and_y1_unweighted():
    # y_max below the points' accuracy: W = 1, the trapezoid of the raw accuracies
    assert aup([(1.0, 50.0), (2.0, 50.0)], y_max=40.0) == pytest.approx(50.0 + 50.0)
    # the first term is not weighted even when y_1 < y_max
    assert aup([(2.0, 40.0)], y_max=80.0) == 80.0


def test_aup_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        aup([], y_max=1.0)
    with pytest.raises(ValueError, match="y_max"):
        aup([(1.0, 1.0)], y_max=0.0)


@pytest.fixture(scope="module")
def tiny_addition():
    from dllm_kernels.addition import default_model

    return default_model(attn_impl="sdpa")


def test_evaluate_scores_by_hand(tiny_addition):
    """evaluate() against generate() run directly: accuracy, NFE and TPF recomputed here."""
    model, tok, task = tiny_addition
    problems = task.heldout(6, seed=5)
    row = evaluate(model, task, problems, tok, "fast_dllm", batch_size=4, label="m", threshold=0.9)
    prompt, target = task.encode(problems, tok)
    out = generate(model, prompt, policy="fast_dllm", gen_length=32, block_length=8, threshold=0.9)
    eos = tok.eos_id
    answers = [task.answer(p) for p in problems]
    texts = [tok.decode(r[: r.index(eos) + 1] if eos in r else r) for r in out.generated.tolist()]
    lengths = [len(r[: r.index(eos) + 1]) if eos in r else 32 for r in out.generated.tolist()]
    assert (row.model, row.policy, row.setting, row.n) == ("m", "fast_dllm", "thr=0.9", 6)
    assert row.accuracy == pytest.approx(100 * sum(t == a for t, a in zip(texts, answers)) / 6)
    assert row.nfe == pytest.approx(out.nfe.double().mean().item())
    assert row.tokens_per_forward == pytest.approx(sum(n / f for n, f in zip(lengths, out.nfe.tolist())) / 6)
    # vanilla: one token per forward over the whole region, answers are solved
    van = evaluate(model, task, problems, tok, "vanilla")
    assert van.nfe == 32 and van.accuracy == 100.0
    assert van.tokens_per_forward == pytest.approx(sum(len(str(p.a + p.b)) + 1 for p in problems) / 6 / 32)


def test_streaming_is_evaluated_despite_ragged_early_exit(tiny_addition):
    model, tok, task = tiny_addition
    row = evaluate(model, task, task.heldout(4, seed=5), tok, "streaming", threshold=0.9)
    assert row.n == 4 and 1 <= row.nfe < 32


def test_sweep_aup_and_files(tiny_addition, tmp_path):
    model, tok, task = tiny_addition
    sweeps = {"vanilla": [dict(steps_per_block=4)], "fast_dllm": [dict(threshold=0.99), dict(threshold=0.5)]}
    rows = sweep({"a": model}, task, task.heldout(4, seed=9), tok, sweeps)
    assert [(r.model, r.policy, r.setting) for r in rows] == [
        ("a", "vanilla", "steps/block=4"),
        ("a", "fast_dllm", "thr=0.99"),
        ("a", "fast_dllm", "thr=0.5"),
    ]
    table = aup_table(rows)
    y_max = max(r.accuracy for r in rows)
    assert [(a.policy, a.points, a.y_max) for a in table] == [("vanilla", 1, y_max), ("fast_dllm", 2, y_max)]
    assert table[0].aup == pytest.approx(rows[0].tokens_per_forward * rows[0].accuracy)
    assert table[1].aup == aup([(r.tokens_per_forward, r.accuracy) for r in rows[1:]], y_max)
    paths = write_results(rows, tmp_path, name="t")
    assert [p.name for p in paths] == ["t.md", "t.json", "t.png"] and all(p.stat().st_size > 0 for p in paths)
    assert "| a | fast_dllm | thr=0.5 |" in paths[0].read_text()


def test_cli_eval_prints_the_table_and_writes_the_files(tmp_path, capsys):
    from dllm_kernels.__main__ import main

    assert main(["eval", "--problems", "3", "--policies", "vanilla", "d3llm", "--compare", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "base             vanilla         steps/block=4" in text
    assert "base             d3llm           thr=0.5" in text
    assert "AUP (alpha 3" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json", "eval.md", "eval.png"]


def test_each_model_runs_the_policies_that_fit_it(capsys):
    """The block-diffusion copy runs the block-causal policies and vanilla, the bidirectional base
    the others; a policy that fits no model is a one-line CLI error, not an empty table."""
    from dllm_kernels.__main__ import main
    from dllm_kernels.addition.default import DEFAULT_BLOCK_DIFFUSION_DIR, DEFAULT_UNIFORM_STATE_DIR, default_model
    from dllm_kernels.addition.evaluate import fits

    base, bd = default_model()[0], default_model(path=DEFAULT_BLOCK_DIFFUSION_DIR)[0]
    us = default_model(path=DEFAULT_UNIFORM_STATE_DIR)[0]
    names = ("vanilla", "fast_dllm", "d3llm", "sdar", "fast_dllm_v2", "diffusion_gemma")
    assert [fits(base, p) for p in names] == [1, 1, 1, 0, 0, 0]
    assert [fits(bd, p) for p in names] == [1, 0, 0, 1, 1, 0]
    assert [fits(us, p) for p in names] == [0, 0, 0, 0, 0, 1]
    assert main(["eval", "--problems", "2", "--policies", "sdar", "fast_dllm", "--compare"]) == 2
    assert "--policies: sdar fit none of the models (base)" in capsys.readouterr().err
    assert main(["eval", "--problems", "2", "--policies", "sdar", "fast_dllm", "diffusion_gemma"]) == 0
    rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines() if line.startswith(("base ", "tiny-"))]
    assert {tuple(r) for r in rows} == {
        ("base", "fast_dllm"),
        ("tiny-addition-d3", "fast_dllm"),
        ("tiny-addition-bd", "sdar"),
        ("tiny-addition-us", "diffusion_gemma"),
    }


def test_cli_model_directory_with_its_task(capsys):
    """``--model DIR`` of a checkpoint written by train (it has task.json) brings its task: eval
    runs on it (the policies that fit it, by default) and generate takes ``--problem`` with the
    task's canvas layout (here the uniform-state model, blocks of 8)."""
    from dllm_kernels.__main__ import main
    from dllm_kernels.addition.default import DEFAULT_UNIFORM_STATE_DIR

    us = str(DEFAULT_UNIFORM_STATE_DIR)
    assert main(["eval", "--model", us, "--compare", "--problems", "2", "--label", "us"]) == 0
    rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines() if line.startswith("us ")]
    assert rows and {r[1] for r in rows} == {"diffusion_gemma"}
    argv = ["generate", "--model", us, "--problem", "4821+77919", "--policy", "diffusion_gemma", "--seed", "3"]
    assert main(argv) == 0
    assert "expected '04728<|endoftext|>'" in capsys.readouterr().out
