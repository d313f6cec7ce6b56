"""How the layers are wired: the kernel layer (``kernels/``, installed as ``dllm_kernels.kernels``)
imports nothing above it, the facts it shares with the public layer agree, and every custom op of
the ``dllm_kernels`` namespace is registered through ``backend.register_op``."""

import ast
import dataclasses
import pathlib

import pytest
import torch

import dllm_kernels as dk
from dllm_kernels import _env, _types, backend
from dllm_kernels.kernels import _aot, _utils

ROOT = pathlib.Path(__file__).resolve().parents[1]
OPS = {
    "token_stats",
    "token_stats_partial",
    "merge_token_stats",
    "window_confidence",
    "soft_embedding",
    "soft_embedding_partial",
    "merge_soft_embedding",
    "attention",
    "refresh_kv_cache",
    "commit",
    "block_edit",
}


def _imports_above(path: pathlib.Path) -> list[str]:
    """The imports of ``path`` (a module of dllm_kernels.kernels) that reach outside the package."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level >= 2:  # from .. import x: the package above
                bad.append(f"{path.name}:{node.lineno}: from {'.' * node.level}{node.module or ''}")
                continue
            names = [] if node.level else [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")
            if top[0] == "dllm_kernels" and top[:2] != ["dllm_kernels", "kernels"]:
                bad.append(f"{path.name}:{node.lineno}: {name}")
    return bad


def test_the_kernel_layer_imports_nothing_above_it():
    modules = sorted((ROOT / "kernels").glob("*.py"))
    assert {p.name for p in modules} >= {"__init__.py", "_aot.py", "_utils.py", "commit.py", "confidence.py"}
    bad = [hit for p in modules for hit in _imports_above(p)]
    assert not bad, "kernels/ imports from dllm_kernels outside dllm_kernels.kernels:\n" + "\n".join(bad)


def test_the_import_check_catches_imports_from_above(tmp_path):
    for line in (
        "from dllm_kernels.policies import compiled_rules",
        "import dllm_kernels._env",
        "from dllm_kernels import policies",
        "from .. import policies",
        "def f():\n    from dllm_kernels._types import CommitRule",
    ):
        (tmp_path / "m.py").write_text(line + "\n")
        assert _imports_above(tmp_path / "m.py"), line
    (tmp_path / "m.py").write_text("from dllm_kernels.kernels import _utils\nfrom . import _utils\nimport torch\n")
    assert not _imports_above(tmp_path / "m.py")


@pytest.mark.parametrize("value", [None, "1", "true", "ON", "Yes", "0", "", "no", "2"])
def test_both_layers_read_the_interpreter_switch_alike(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    else:
        monkeypatch.setenv("TRITON_INTERPRET", value)
    assert _utils.interpreter_enabled() == _env.interpreter_enabled()


def test_shared_facts_agree():
    assert _utils.HEAD_DIMS == _types.HEAD_DIMS
    assert _utils.MAX_COMMIT_POSITIONS == _types.MAX_COMMIT_POSITIONS
    # the commit launcher reads every rule field and every state field
    assert set(_utils.CommitRule.__annotations__) == {f.name for f in dataclasses.fields(dk.CommitRule)}
    assert set(_utils.CommitState.__annotations__) == {f.name for f in dataclasses.fields(dk.CommitState)}


def test_the_commit_rules_to_compile_are_handed_in():
    commit_specs = [s for s in _aot.all_specs({}) if s.name.startswith("commit[")]
    assert not commit_specs
    rules = {"mine": dk.CommitRule(base="entropy", token_edit=True)}
    names = [s.name for s in _aot.all_specs(rules) if s.name.startswith("commit[")]
    assert names and all(n.startswith("commit[mine,") for n in names)


def test_every_op_is_registered_through_register_op():
    namespace = {
        n.split("::", 1)[1].split(".")[0]
        for n in torch._C._dispatch_get_all_op_names()
        if n.startswith("dllm_kernels::")
    }
    assert namespace == OPS
    assert set(backend.REGISTERED) == OPS
    for name, op in backend.REGISTERED.items():
        assert getattr(torch.ops.dllm_kernels, name).default._schema == op._opoverload._schema


def test_the_commit_op_carries_no_text():
    """The rule travels as typed values (a Scalar list), never as a string."""
    args = torch.ops.dllm_kernels.commit.default._schema.arguments
    assert str(args[-1].type) == "List[number]"  # Scalar[]
    assert not [a.name for a in args if str(a.type) == "str"]


def test_the_commit_rule_keeps_its_types_through_the_op():
    """Triton specialises on the Python type (i32 for 1, fp32 for 1.0): the custom op must hand the
    launcher the rule's values with their own types, as eager mode does."""
    from dllm_kernels.commit import _rule_args, _rule_of

    for threshold in (1, 1.0):
        rule, mask_id, vocab = _rule_of(*_rule_args(dk.CommitRule(threshold=threshold, token_edit=True), 7, None))
        assert type(rule.threshold) is type(threshold) and rule.token_edit is True
        assert (mask_id, vocab) == (7, None)
