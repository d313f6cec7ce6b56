"""The command line: bad input ends with one stderr line naming the option (exit status 2, no
traceback unless --debug), an explicit bad value is never replaced by a default, and a few good
invocations on tiny settings.

Most invocations run in-process (``main(argv)``; a subprocess costs the torch import each time);
two run ``python -m dllm_kernels`` for the real exit status and stderr.
"""

import shutil
import subprocess
import sys

import pytest

import dllm_kernels
from dllm_kernels.__main__ import build_parser, main
from dllm_kernels.addition.default import DEFAULT_MODEL_DIR
from dllm_kernels.models import load_pretrained, write_tiny_llada
from dllm_kernels.policies import POLICIES


def _run(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_one_line_error(rc, err, *names):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], (name, lines[0])


# (argv, what the line must name); every one fails before any decoding
BAD = [
    # issue 16: explicit values that used to become defaults, or wrong answers
    (["generate", "--gen-length", "0"], "--gen-length"),
    (["generate", "--block-length", "0"], "--block-length"),
    (["eval", "--problems", "0"], "--problems"),
    (["generate", "--problem", "12345678901234567890+1"], "--problem"),
    (["generate", "--problem", "abc"], "--problem"),
    (["generate", "--problem", "1+2+3"], "--problem"),
    (["generate", "--problem", "-5+3"], "--problem"),
    (["generate", "--problem", "1+"], "--problem"),
    # every option of generate with a bad value
    (["generate", "--gen-length", "8.0"], "--gen-length"),
    (["generate", "--gen-length", "-32"], "--gen-length"),
    (["generate", "--block-length", "x"], "--block-length"),
    (["generate", "--block-length", "5"], "block_length"),  # generate's own check
    (["generate", "--policy", "nope"], "--policy"),
    (["generate", "--set", "threshold"], "--set"),
    (["generate", "--set", "=1"], "--set"),
    (["generate", "--set", "no_such_option=1"], "no_such_option"),
    (["generate", "--temperature", "-1"], "--temperature"),
    (["generate", "--temperature", "nan"], "--temperature"),
    (["generate", "--temperature", "hot"], "--temperature"),
    (["generate", "--seed", "1.5"], "--seed"),
    (["generate", "--dtype", "int8"], "--dtype"),
    (["generate", "--backend", "cuda"], "--backend"),
    (["generate", "--device", "tpu"], "--device"),
    (["generate", "--prompt", "abc"], "--prompt"),
    (["generate", "--prompt", ""], "prompt"),
    # eval
    (["eval", "--problems", "-1"], "--problems"),
    (["eval", "--policies", "nope"], "--policies"),
    (["eval", "--batch", "0"], "--batch"),
    (["eval", "--threads", "0"], "--threads"),
    (["eval", "--seed", "x"], "--seed"),
    # bench
    (["bench", "--policies", "nope"], "--policies"),
    (["bench", "--paths", "gpu"], "--paths"),
    (["bench", "--batch", "0"], "--batch"),
    (["bench", "--repeats", "0"], "--repeats"),
    (["bench", "--prompt-length", "0"], "--prompt-length"),
    (["bench", "--gen-length", "0"], "--gen-length"),
    (["bench", "--block-length", "-1"], "--block-length"),
    (["bench", "--seed", "1e3"], "--seed"),
    # demo
    (["demo", "--rows", "0"], "--rows"),
    (["demo", "--vocab", "x"], "--vocab"),
    # train
    (["train", "--steps", "0"], "--steps"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--lr", "0"], "--lr"),
    (["train", "--lr", "inf"], "--lr"),
    (["train", "--seed", "x"], "--seed"),
    (["train", "--threads", "0"], "--threads"),
    (["train", "--heldout", "0"], "--heldout"),
    (["train", "--heldout-seed", "x"], "--heldout-seed"),
    # distill
    (["distill", "--variant", "x"], "--variant"),
    (["distill", "--problems", "0"], "--problems"),
    (["distill", "--steps", "-1"], "--steps"),
    (["distill", "--batch-size", "0"], "--batch-size"),
    (["distill", "--lr", "-1e-4"], "--lr"),
    (["distill", "--entropy-weight", "-1"], "--entropy-weight"),
    (["distill", "--seed", "0.5"], "--seed"),
    (["distill", "--threads", "0"], "--threads"),
    # an option without its value, an unknown option
    (["generate", "--seed"], "--seed"),
    (["generate", "--no-such-flag"], "--no-such-flag"),
    (["eval", "--policies"], "--policies"),
    # the command itself
    ([], "COMMAND"),
    (["nope"], "nope"),
]


@pytest.mark.parametrize("argv, name", BAD, ids=[" ".join(a) or "(none)" for a, _ in BAD])
def test_bad_invocation_is_one_line_naming_the_option(argv, name, capsys):
    rc, out, err = _run(argv, capsys)
    _assert_one_line_error(rc, err, name)


def test_bad_paths_name_the_option_and_the_file(tmp_path, capsys):
    missing = str(tmp_path / "missing")
    rc, _, err = _run(["generate", "--model", missing], capsys)
    _assert_one_line_error(rc, err, "--model", missing)
    rc, _, err = _run(["eval", "--compare", missing, "--problems", "1"], capsys)
    _assert_one_line_error(rc, err, "--compare", missing)
    # a checkpoint without task.json cannot be evaluated on the addition task
    write_tiny_llada(tmp_path / "llada")
    rc, _, err = _run(["eval", "--model", str(tmp_path / "llada"), "--problems", "1"], capsys)
    _assert_one_line_error(rc, err, "--model", "task.json")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_safetensors_names_the_file(damage, tmp_path, capsys):
    # the native checkpoint (the CLI's --model) and a sharded Hugging Face one (the library)
    native = tmp_path / "native"
    shutil.copytree(DEFAULT_MODEL_DIR, native)
    hf = write_tiny_llada(tmp_path / "hf", n_shards=2).path
    for file in (native / "model.safetensors", sorted(hf.glob("model-*.safetensors"))[0]):
        data = file.read_bytes()
        file.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a safetensors file")
    rc, _, err = _run(["generate", "--model", str(native)], capsys)
    _assert_one_line_error(rc, err, "--model", str(native / "model.safetensors"))
    with pytest.raises(ValueError, match="model-00001-of-00002.safetensors: not a readable safetensors file"):
        load_pretrained(hf)


def test_library_errors_become_one_line(monkeypatch, capsys):
    """A ValueError / TypeError raised by the library (generate's checks of its arguments) is bad
    input: one line, status 2; anything else is status 1 with a hint; --debug re-raises."""

    def bad(*args, **kwargs):
        raise ValueError("generate: refresh_interval must be a positive integer, got 0")

    monkeypatch.setattr(dllm_kernels, "generate", bad)
    rc, _, err = _run(["generate", "--problem", "1+2"], capsys)
    _assert_one_line_error(rc, err, "dllm-kernels generate: error: generate: refresh_interval")

    def broken(*args, **kwargs):
        raise ZeroDivisionError("integer division\nor modulo by zero")

    monkeypatch.setattr(dllm_kernels, "generate", broken)
    rc, _, err = _run(["generate", "--problem", "1+2"], capsys)
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "ZeroDivisionError: integer division or modulo by zero" in err and "--debug" in err
    with pytest.raises(ZeroDivisionError):
        main(["generate", "--problem", "1+2", "--debug"])


def test_max_nfe_error_is_one_line(monkeypatch, capsys):
    """A decode that runs out of forwards (generate's MaxNFEError, exported by the package) is one
    line naming max_nfe, status 1, no traceback hint; --debug re-raises it."""
    assert dllm_kernels.MaxNFEError is dllm_kernels.decode.MaxNFEError

    def stuck(*args, **kwargs):
        raise dllm_kernels.MaxNFEError("generate: rows [0] reached max_nfe (3) with masks left\n(partial)")

    monkeypatch.setattr(dllm_kernels, "generate", stuck)
    rc, _, err = _run(["generate", "--problem", "1+2"], capsys)
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err and "--debug" not in err
    assert err.startswith("dllm-kernels generate: error: generate: rows [0] reached max_nfe (3)")
    with pytest.raises(dllm_kernels.MaxNFEError):
        main(["generate", "--problem", "1+2", "--debug"])


def test_policy_choices_come_from_the_policy_table():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    assert set(sub) == {"demo", "generate", "eval", "distill", "train", "bench"}
    for command, option in (("generate", "policy"), ("eval", "policies"), ("bench", "policies")):
        action = next(a for a in sub[command]._actions if a.dest == option)
        assert set(action.choices) == set(POLICIES), (command, option)
    assert "d3llm_dream" in POLICIES


def test_generate_solves_an_addition(capsys):
    rc, out, err = _run(["generate", "--problem", "98765+43210", "--backend", "reference"], capsys)
    assert rc == 0, err
    assert "98765 + 43210 = 141975" in out and "-> correct" in out
    # the largest operands the task allows are accepted
    rc, out, err = _run(
        ["generate", "--problem", "9999999999999999+1", "--policy", "d3llm_dream", "--backend", "reference"], capsys
    )
    assert rc == 0, err
    assert "= 10000000000000000" in out and "policy   d3llm_dream" in out


def test_eval_runs_d3llm_dream(capsys):
    rc, out, err = _run(
        ["eval", "--problems", "2", "--policies", "d3llm_dream", "--compare", "--backend", "reference"], capsys
    )
    assert rc == 0, err
    assert "base" in out and "d3llm_dream" in out


@pytest.mark.parametrize("command", ["demo", "generate", "eval", "distill", "train", "bench"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert f"dllm-kernels {command}" in capsys.readouterr().out


def test_as_a_process(tmp_path):
    """``python -m dllm_kernels``: the exit status and stderr a shell sees (run outside the
    checkout, so that the installed package is imported whatever the kind of install)."""
    cmd = [sys.executable, "-m", "dllm_kernels", "generate", "--gen-length", "0"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [
        "dllm-kernels generate: error: argument --gen-length: must be a positive integer, got '0'"
    ]
    r = subprocess.run([*cmd[:4], "--prompt", "", "--debug"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" in r.stderr and "every prompt needs at least one token" in r.stderr


def test_commands_keep_freed_memory_on_glibc():
    """The commands let glibc's malloc keep freed memory (``_env.keep_freed_memory``); elsewhere
    nothing changes."""
    import platform

    from dllm_kernels._env import keep_freed_memory

    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")
