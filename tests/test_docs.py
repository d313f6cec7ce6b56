"""Documentation cites only what the repository holds.

* every ``DESIGN.md N.M`` in the code is a section of DESIGN.md, and nothing cites the team's notes
  outside the repository;
* README.md, DESIGN.md and docs/*.md cite only files and folders that exist (backticked paths,
  relative links and their ``#anchors``) and only ``dllm_kernels.`` / ``bench.`` names that import
  (backticked dotted names, and the imports and ``dk.`` names of their Python examples);
* every measured figure in a generated section is what ``scripts/render_docs.py`` renders from
  ``bench/results/*.json`` today (no figure typed by hand).

Each checker is a plain function of a document's text, shown to fail on a synthetic bad document.
"""

import ast
import importlib
import importlib.util
import itertools
import json
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = sorted(
    p
    for folder in ("dllm_kernels", "kernels", "reference", "bench", "tests", "scripts")
    for p in (ROOT / folder).rglob("*")
    if p.suffix in (".py", ".sh", ".md") and p != pathlib.Path(__file__)
)
DOCUMENTS = [ROOT / "README.md", ROOT / "DESIGN.md", *sorted((ROOT / "docs").glob("*.md"))]
# the notes the project was designed from, which are not shipped with it
OUTSIDE = (
    "../shared",
    "shared/reference",
    "dllm-decoding-algorithms.md",
    "sglang-on-cpu.md",
    "triton-kernel-practices.md",
    "STYLE.md",
)
# Folders that DESIGN.md's layout (5) names ahead of the branches that create them: while one is
# absent, the paths under it are not checked; once it exists, `test_pending_folders_are_still_pending`
# fails until it is removed from here, and every path under it is checked like any other.
PENDING = ()
# git-ignored paths that a script of the repository writes at setup (cited, absent in a fresh
# checkout): path -> the script that writes it
GENERATED = {"bench/vllm_diffusion_gemma_sampler.py": "scripts/fetch_vllm_sampler.py"}

sys.path.insert(0, str(ROOT / "scripts"))
import render_docs  # noqa: E402

# ------------------------------------------------------------------------------------------------
# the checkers
# ------------------------------------------------------------------------------------------------

FENCE = re.compile(r"^ *```.*?^ *```[^\n]*$", re.S | re.M)
# a repository path: no spaces, at least one slash; `<name>` is a placeholder, `{a,b}` alternatives
PATH = re.compile(r"^(?:\./)?([A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.*<>{},-]+)*/?)$")
EXTENSION = re.compile(r"\.(py|md|sh|json|toml|txt|png|yaml|yml|cfg|ini|safetensors)$")
SYMBOL = re.compile(r"^((?:dllm_kernels|bench)(?:\.[A-Za-z_]\w*)+)(?:\(.*\))?$", re.S)
ENTRY_POINT = re.compile(r"^(dllm_kernels(?:\.\w+)*):(\w+)$")  # an entry point's module:attribute
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """``text`` without its fenced code blocks."""
    return FENCE.sub("", text)


def code_spans(text: str) -> list[str]:
    """The inline code spans of the prose (single backticks; a span may wrap a line), whitespace
    collapsed."""
    return [" ".join(s.split()) for s in re.findall(r"(?<!`)`([^`]+)`(?!`)", prose(text))]


def _expand(path: str) -> list[str]:
    """Glob patterns for ``path``: ``<x>`` -> ``*``, ``{a,b}`` -> one pattern per alternative."""
    path = re.sub(r"<[^>/]*>", "*", path)
    parts = re.split(r"\{([^{}]*)\}", path)
    options = [p.split(",") if i % 2 else [p] for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*options)]


def _is_repo_path(path: str, top: set) -> bool:
    """A span that names a path of this repository: it starts at one of its top-level entries, or
    ends in a file extension or a slash (``tokens/s``, ``K/V``, ``GSAI-ML/LLaDA-8B-*`` are not)."""
    first = path.split("/")[0]
    if "/" not in path or not re.fullmatch(r"\.?[a-z0-9_]+(\.[a-z]+)?", first):
        return False
    return first in top or path.endswith("/") or bool(EXTENSION.search(path))


def path_problems(text: str, root: pathlib.Path = ROOT, pending=PENDING) -> list[str]:
    """Backticked repository paths of ``text`` (relative to ``root``) that do not exist (each
    alternative of a ``{a,b}``)."""
    top = {p.name for p in root.iterdir()} | {"docs"}
    out = []
    for span in code_spans(text):
        m = PATH.match(span)
        if not m or not _is_repo_path(m.group(1), top):
            continue
        path = m.group(1)
        if any(path.startswith(p) and not (root / p).is_dir() for p in pending) or path in GENERATED:
            continue
        if not all(list(root.glob(pattern.rstrip("/"))) for pattern in _expand(path)):
            out.append(f"no such path: {path}")
    return out


def _resolve(dotted: str):
    """The object a dotted ``dllm_kernels.`` / ``bench.`` name stands for; AttributeError or
    ImportError when there is none."""
    parts = dotted.split(".")
    if parts[0] == "bench":
        folder = str(ROOT / "bench")
        if folder not in sys.path:
            sys.path.insert(0, folder)
        parts = parts[1:]
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError as e:
            if e.name is None or not ".".join(parts[:i]).startswith(e.name):
                raise  # the module exists and fails to import
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(f"no module {parts[0]}")


def _check(name: str) -> str | None:
    try:
        _resolve(name)
    except (ImportError, AttributeError) as e:
        return f"no such name: {name} ({type(e).__name__}: {e})"
    return None


def symbol_problems(text: str) -> list[str]:
    """Backticked ``dllm_kernels.`` / ``bench.`` dotted names (and ``module:attribute`` entry
    points) that do not resolve, and, in the
    Python examples, ``from dllm_kernels... import`` names and ``dk.NAME`` (``import dllm_kernels
    as dk``) that do not exist."""
    names = [m.group(1) for span in code_spans(text) if (m := SYMBOL.match(span))]
    points = [m.groups() for span in code_spans(text) if (m := ENTRY_POINT.match(span))]
    for block in re.findall(r"^ *```python\n(.*?)^ *```", text, re.S | re.M):
        for module, imported in re.findall(r"^\s*from (dllm_kernels[\w.]*) import \(?([\w, ]+)", block, re.M):
            names += [f"{module}.{n.strip()}" for n in imported.split(",") if n.strip()]
        names += re.findall(r"^\s*import (dllm_kernels[\w.]*)", block, re.M)
        if re.search(r"\bdllm_kernels as dk\b", block):
            names += [f"dllm_kernels.{n}" for n in re.findall(r"\bdk\.(\w+)", block)]
    problems = [p for n in dict.fromkeys(names) if (p := _check(n))]
    return problems + [f"no such entry point: {m}:{a}" for m, a in points if not _defines(m, a)]


def _defines(module: str, name: str) -> bool:
    """``module``'s source defines ``name`` at its top level; read, not imported (an entry point's
    module may import an optional package, e.g. SGLang)."""
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return False
    if spec is None or not spec.origin:
        return False
    tree = ast.parse(pathlib.Path(spec.origin).read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == name:
            return True
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return True
    return False


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    heading = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def anchors(text: str) -> set:
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", prose(text), re.M)}


def link_problems(text: str, path: pathlib.Path) -> list[str]:
    """Relative links of ``text`` (a document at ``path``) whose file or ``#anchor`` is missing."""
    out = []
    for target in LINK.findall(prose(text)):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto:
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve()
        if file and not dest.exists():
            out.append(f"broken link: {target}")
        elif anchor and dest.suffix in (".md", "") and anchor not in anchors(dest.read_text() if file else text):
            out.append(f"no such anchor: {target}")
    return out


# ------------------------------------------------------------------------------------------------
# the repository's documents
# ------------------------------------------------------------------------------------------------


def test_design_citations_name_existing_sections():
    sections = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)*)\.? ", (ROOT / "DESIGN.md").read_text(), re.M))
    assert {"1", "1.1", "1.2", "1.3", "1.4", "2", "3", "4", "5", "6", "7"} <= sections
    cited = {}
    for path in SOURCES:
        for section in re.findall(r"DESIGN\.md,? (\d+(?:\.\d+)*)", path.read_text()):
            cited.setdefault(section, []).append(str(path.relative_to(ROOT)))
    assert cited, "no citation found: the pattern is wrong"
    missing = {s: files for s, files in cited.items() if s not in sections}
    assert not missing, f"DESIGN.md has no such section: {missing}"


def test_nothing_cites_files_outside_the_repository():
    documents = [*SOURCES, *DOCUMENTS]
    found = [(str(p.relative_to(ROOT)), name) for p in documents for name in OUTSIDE if name in p.read_text()]
    assert not found, found


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documents_cite_existing_paths(doc):
    text = doc.read_text()
    assert not path_problems(text), path_problems(text)
    assert not link_problems(text, doc), link_problems(text, doc)


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documents_cite_existing_names(doc):
    problems = symbol_problems(doc.read_text())
    assert not problems, problems


def test_documents_are_found_and_checked():
    """The checkers see what the documents cite (guards against patterns that match nothing)."""
    assert {"README.md", "DESIGN.md", "benchmarks.md"} <= {p.name for p in DOCUMENTS}
    text = "".join(p.read_text() for p in DOCUMENTS)
    spans = code_spans(text)
    assert sum(bool(SYMBOL.match(s)) for s in spans) >= 10
    assert sum(bool(PATH.match(s)) for s in spans) >= 30
    assert len(LINK.findall(text)) >= 5


def test_readme_holds_the_two_commands():
    """The README's test command is, byte for byte, the last line of .ci/run; the main job's too."""
    blocks = re.findall(r"^```bash\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == "bash scripts/bootstrap.sh && .venv/bin/python -m pytest -n 2 --dist loadfile -q"
    assert blocks[:2] == ["bash scripts/bootstrap.sh && .venv/bin/python -m dllm_kernels eval\n", ci + "\n"]


def test_generated_paths_are_ignored_and_written_by_their_script():
    """A cited path that may be absent (GENERATED) is git-ignored and written by its script."""
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    for path, script in GENERATED.items():
        assert path in ignored, f"{path} is cited as generated but git does not ignore it"
        writer = (ROOT / script).read_text()
        assert path.split("/")[-1] in writer and path.split("/")[0] in writer, f"{script} does not write {path}"


def test_pending_folders_are_still_pending():
    landed = [p for p in PENDING if (ROOT / p).is_dir()]
    assert not landed, f"{landed} exist now: remove them from PENDING so that the paths under them are checked"


def test_generated_sections_are_current():
    """Re-rendering from bench/results/*.json changes nothing (run scripts/render_docs.py)."""
    used = set()
    for doc in DOCUMENTS:
        text = doc.read_text()
        used |= set(render_docs.BEGIN.findall(text))
        assert render_docs.render(text) == text, f"{doc.relative_to(ROOT)} is stale: run scripts/render_docs.py"
    assert used == set(render_docs.SECTIONS), f"sections rendered nowhere: {set(render_docs.SECTIONS) - used}"
    assert render_docs.main(["--check"]) == 0


def test_eval_markdown_is_its_json():
    """bench/results/eval-full.md is what evaluate.markdown writes from eval-full.json's rows."""
    assert (ROOT / "bench" / "results" / "eval-full.md").read_text() == render_docs.eval_markdown()


# ------------------------------------------------------------------------------------------------
# each check fails on a bad document
# ------------------------------------------------------------------------------------------------


def test_path_check_fails_on_missing_paths(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "sub" / "a.py").write_text("")
    (tmp_path / "pkg" / "b.md").write_text("")
    good = (
        "`pkg/sub/a.py`, `pkg/sub/`, `pkg/sub`, `pkg/sub/<name>.py`, `pkg/{b.md,sub/a.py}`, `./pkg/b.md`,"
        " `tokens/s`, `K/V`, `GSAI-ML/LLaDA-8B-*`, `x = a / b`, `/tmp/x.py`, `a.py`\n"
        "```\npkg/nothing.py\n```\n`pkg/sub\n/a.py`"
    )
    assert path_problems(good, tmp_path, ()) == []
    bad = "`pkg/sub/c.py` `pkg/none/` `pkg/{b.md,c.md}` `pkg/<x>.txt` `other/thing.py`, `pkg/sub/a.py`"
    assert path_problems(bad, tmp_path, ()) == [
        "no such path: pkg/sub/c.py",
        "no such path: pkg/none/",
        "no such path: pkg/{b.md,c.md}",
        "no such path: pkg/<x>.txt",
        "no such path: other/thing.py",
    ]
    # a pending folder exempts the paths under it only while it is absent
    assert path_problems("`pkg/new/x.py`", tmp_path, ("pkg/new/",)) == []
    (tmp_path / "pkg" / "new").mkdir()
    assert path_problems("`pkg/new/x.py`", tmp_path, ("pkg/new/",)) == ["no such path: pkg/new/x.py"]


def test_symbol_check_fails_on_missing_names():
    good = (
        "`dllm_kernels.token_stats`, `dllm_kernels.models.HFModelAdapter`, `dllm_kernels.kernels`,"
        " `dllm_kernels.addition.evaluate.evaluate(model, task,\n problems)`, `bench.host_step.markdown`,"
        " `dllm_kernels.generate(...)`, `dllm_kernels.integrations.sglang:register` and `dllm_kernels` alone\n"
        "```python\nimport dllm_kernels as dk\nfrom dllm_kernels.models import load_pretrained, HFModelAdapter\n"
        "stats = dk.token_stats(x)\n```\n"
    )
    assert symbol_problems(good) == []
    bad = (
        "`dllm_kernels.token_statz`, `dllm_kernels.nomodule.thing`, `dllm_kernels.models.Nope(x)`,"
        " `bench.host_step.nope`, `dllm_kernels.integrations.sglang:registr`, `dllm_kernels.nopkg.mod:f`\n"
        "```python\nimport dllm_kernels as dk\nfrom dllm_kernels.models import load_pretrained, load_nothing\n"
        "import dllm_kernels.gone\ndk.generat(model)\n```\n"
    )
    problems = symbol_problems(bad)
    assert [p.split(" (")[0] for p in problems] == [
        "no such name: dllm_kernels.token_statz",
        "no such name: dllm_kernels.nomodule.thing",
        "no such name: dllm_kernels.models.Nope",
        "no such name: bench.host_step.nope",
        "no such name: dllm_kernels.models.load_nothing",
        "no such name: dllm_kernels.gone",
        "no such name: dllm_kernels.generat",
        "no such entry point: dllm_kernels.integrations.sglang:registr",
        "no such entry point: dllm_kernels.nopkg.mod:f",
    ]


def test_link_check_fails_on_missing_files_and_anchors(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("# Title\n## The `x` op: a, b\n```\n# not a heading\n```\n")
    doc = tmp_path / "README.md"
    good = "[b](docs/b.md), [t](docs/b.md#title), [x](docs/b.md#the-x-op-a-b), [here](#top), [w](https://x.org/y)"
    good += "\n# Top\n"
    assert link_problems(good, doc) == []
    bad = "[c](docs/c.md) [n](docs/b.md#not-a-heading) [m](#missing)\n# Top\n"
    assert link_problems(bad, doc) == [
        "broken link: docs/c.md",
        "no such anchor: docs/b.md#not-a-heading",
        "no such anchor: #missing",
    ]


def test_render_replaces_stale_figures_and_rejects_bad_markers():
    sections = {"a": lambda: "| x |\n| 1 |\n"}
    begin, end = "<!-- BEGIN generated: a -->\n", "<!-- END generated -->"
    fresh = f"intro\n{begin}| x |\n| 1 |\n{end}\nafter\n"
    assert render_docs.render(fresh, sections) == fresh
    stale = f"intro\n{begin}| x |\n| 2 |\n{end}\nafter\n"
    assert render_docs.render(stale, sections) == fresh
    with pytest.raises(ValueError, match="unknown generated section 'b'"):
        render_docs.render(fresh.replace("generated: a", "generated: b"), sections)
    with pytest.raises(ValueError, match="has no <!-- END generated -->"):
        render_docs.render(f"{begin}| x |\n", sections)
    with pytest.raises(ValueError, match="has no <!-- END generated -->"):
        render_docs.render(f"{begin}{begin}{end}", sections)


def test_default_settings_are_the_published_defaults_of_the_full_sweeps():
    """Every policy of the full sweep has a DEFAULT_SETTING in render_docs.py, that setting is the
    label (as evaluate writes it) of one point of its full sweep, and that point decodes with the
    policy's published defaults (a policy of equal fields)."""
    from dllm_kernels.addition import evaluate
    from dllm_kernels.policies import resolve_policy

    def label(overrides):
        short = evaluate._SHORT
        parts = [
            f"{short.get(k, k)}={v:g}" if isinstance(v, float) else f"{short.get(k, k)}={v}"
            for k, v in overrides.items()
        ]
        return " ".join(parts) or "default"

    assert set(evaluate.FULL_SWEEPS) <= set(render_docs.DEFAULT_SETTING)
    for policy, points in evaluate.FULL_SWEEPS.items():
        chosen = [kw for kw in points if label(kw) == render_docs.DEFAULT_SETTING[policy]]
        assert len(chosen) == 1, (policy, render_docs.DEFAULT_SETTING[policy], [label(kw) for kw in points])
        assert resolve_policy(policy, **chosen[0]) == resolve_policy(policy), policy
        # the label rule above is evaluate's: a point with overrides is not the published default
        assert all(resolve_policy(policy, **kw) != resolve_policy(policy) for kw in points if kw is not chosen[0])


def test_eval_summary_names_a_policy_without_default_setting(monkeypatch, tmp_path):
    """A result for a policy render_docs.py does not know, or without its default point, is an
    error naming it (not a table missing rows)."""
    row = dict(
        model="m",
        policy="sdar",
        setting="thr=0.9",
        accuracy=100.0,
        nfe=2.0,
        tokens_per_forward=4.0,
        tokens_per_s=1.0,
        n=4,
    )
    aup = dict(model="m", policy="sdar", aup=1.0, y_max=100.0, best_tpf=4.0, points=1)
    (tmp_path / "eval-full.json").write_text(json.dumps({"rows": [row], "aup": [aup]}))
    monkeypatch.setattr(render_docs, "RESULTS", tmp_path)
    with pytest.raises(ValueError, match=r"m/sdar has no single row 'thr=0\.85'"):
        render_docs.eval_summary()
    doc = {"rows": [dict(row, policy="new_one")], "aup": [dict(aup, policy="new_one")]}
    (tmp_path / "eval-full.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="policies without a DEFAULT_SETTING in render_docs.py: new_one"):
        render_docs.eval_summary()


def test_design_policy_table_is_the_policies():
    """DESIGN.md 3's table of policies names every policy of POLICIES once, with the scheduler and
    (first) cache mode its constructor returns at the published defaults."""
    from dllm_kernels.policies import POLICIES

    text = (ROOT / "DESIGN.md").read_text()
    head = "| policy | scheduler | cache |\n|---|---|---|\n"
    assert text.count(head) == 1
    table = text[text.index(head) + len(head) :].split("\n\n")[0]
    seen = {}
    for line in table.splitlines():
        names, scheduler, cache = (c.strip() for c in line.strip("|").split("|"))
        for name in re.findall(r"`(\w+)`", names):
            seen[name] = (scheduler.strip("`"), re.match(r"`(\w+)`", cache).group(1))
    assert seen == {name: (make().scheduler, make().cache) for name, make in POLICIES.items()}
