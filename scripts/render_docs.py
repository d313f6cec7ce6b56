"""Render the measured figures of the documentation from ``bench/results/*.json``.

    .venv/bin/python scripts/render_docs.py           # rewrite the generated sections in place
    .venv/bin/python scripts/render_docs.py --check   # exit 1 (naming the files) if any is stale
    .venv/bin/python scripts/render_docs.py --results DIR  # print the sections DIR/*.json would give

A generated section of a markdown file sits between two marker comments::

    <!-- BEGIN generated: NAME -->
    ...written by this script, never by hand...
    <!-- END generated -->

NAME is a key of :data:`SECTIONS`; everything between the markers is replaced by that section's
text. The tables reuse the benchmarks' own formatters (``bench/host_step.py``'s and
``bench/host_split.py``'s ``markdown``, ``dllm_kernels.addition.evaluate.markdown``), so a table
in the docs is the table the benchmark prints. ``tests/test_docs.py`` fails when re-rendering would
change a committed file, so no figure in a generated section is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BEGIN = re.compile(r"<!-- BEGIN generated: ([\w-]+) -->\n")
END = "<!-- END generated -->"


def _bench(name: str):
    """``bench/NAME.py`` as a module (bench/ is a folder of scripts that import each other)."""
    folder = str(ROOT / "bench")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return __import__(name)


def _json(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


# ------------------------------------------------------------------------------------------------
# host time per decoding step (bench/host_step.py, bench/host_split.py)
# ------------------------------------------------------------------------------------------------


def host_step_table() -> str:
    return _bench("host_step").markdown(_json("host_step.json"))


def host_step_setup() -> str:
    m = _json("host_step.json")["meta"]
    s = m["shapes"]
    peers = m["peers"]
    said = (
        "the peers at the commits "
        + ", ".join(f"{name} `{commit[:10]}`" for name, commit in peers["commits"].items())
        + f", their KV cache with {peers['layers']} layers"
        if isinstance(peers, dict)
        else f"peers: {peers}"
    )
    return (
        f"Vocabulary {s['vocab']}, prompt {s['prompt']}, {s['gen']} new tokens, blocks of {s['block']}; "
        f"median of {m['repeats']} runs, {m['threads']} intra-op thread(s), torch {m['torch']}, "
        f"Python {m['python']}, {m['cpu_count']} CPUs ({m['machine']}); {said}. "
        f"The whole script took {m['wall_s']} s."
    )


def host_split_table() -> str:
    return _bench("host_split").markdown(_json("host_split.json"))


def host_split_setup() -> str:
    m = _json("host_split.json")["meta"]
    return (
        f"{m['path'].capitalize()} path, median of {m['repeats']} runs, {m['threads']} intra-op thread(s), "
        f"torch {m['torch']}, {m['cpu_count']} CPUs; the peers' B=1 figures come from `host_step.json`."
    )


def host_targets() -> str:
    """Per path: the range of each target's ratio over the policies and how many policies meet it."""
    ratios = _json("host_split.json")["ratios"]
    lines = [
        "| path | ours B=1 / peer B=1 (target <= 0.5) | policies meeting it | ours B=64 / B=1 (target <= 1.5) "
        "| policies meeting it |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, name in (("eager", "eager (default)"), ("graph", "CUDA graph (`cuda_graph=True`)")):
        cells = []
        for key, met in ((f"{label}_B1/peer_B1", f"met_{label}_B1"), (f"{label}_B64/B1", f"met_{label}_B64")):
            values = [r[key] for r in ratios.values() if key in r]
            cells.append(f"{min(values)}-{max(values)}" if values else "-")
            cells.append(f"{sum(bool(r.get(met)) for r in ratios.values())} of {len(values)}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# evaluation (python -m dllm_kernels eval --full --out bench/results --name eval-full)
# ------------------------------------------------------------------------------------------------

# the sweep point of each policy that is its published default (the setting labels of evaluate's
# full sweeps, "default" for a point without overrides); the summary lists the policies in this order
DEFAULT_SETTING = {
    "vanilla": "steps/block=0",
    "fast_dllm": "thr=0.9",
    "streaming": "thr=0.9",
    "r2": "thr=0.9 spatial=0.8 temporal=0.8",
    "d3llm": "thr=0.5",
    "sdar": "thr=0.85",
    "fast_dllm_v2": "thr=0.9",
    "diffusion_gemma": "default",
}


def _eval():
    from dllm_kernels.addition import evaluate

    doc = _json("eval-full.json")
    rows = [evaluate.EvalRow(**r) for r in doc["rows"]]
    table = [evaluate.AUPRow(**a) for a in doc["aup"]]
    return evaluate, doc, rows, table


def eval_markdown() -> str:
    """``bench/results/eval-full.md`` as ``evaluate.write_results`` writes it from the JSON's rows."""
    evaluate, _, rows, table = _eval()
    return evaluate.markdown(rows, table)


def eval_summary() -> str:
    _, _, rows, table = _eval()
    lines = [
        "| policy | model | AUP | most parallel point within 1 pt of y_max: TPF (acc %, NFE) "
        "| published default: acc %, NFE, TPF |",
        "|---|---|---:|---|---|",
    ]
    unknown = sorted({a.policy for a in table} - set(DEFAULT_SETTING))
    if unknown:
        raise ValueError(f"eval-full.json: policies without a DEFAULT_SETTING in render_docs.py: {', '.join(unknown)}")
    for a in sorted(table, key=lambda a: list(DEFAULT_SETTING).index(a.policy)):
        curve = [r for r in rows if (r.model, r.policy) == (a.model, a.policy)]
        near = [r for r in curve if r.accuracy >= a.y_max - 1.0]
        best = max(near, key=lambda r: r.tokens_per_forward, default=None)
        point = "none" if best is None else f"{best.tokens_per_forward:.2f} ({best.accuracy:.1f}, {best.nfe:.2f})"
        default = [r for r in curve if r.setting == DEFAULT_SETTING[a.policy]]
        if len(default) != 1:
            raise ValueError(f"eval-full.json: {a.model}/{a.policy} has no single row {DEFAULT_SETTING[a.policy]!r}")
        d = default[0]
        lines.append(
            f"| {a.policy} | {a.model} | {a.aup:.1f} | {point} | {d.accuracy:.1f}, {d.nfe:.2f}, "
            f"{d.tokens_per_forward:.2f} |"
        )
    return "\n".join(lines)


def eval_policy_rows(policy: str) -> str:
    """Every row of ``policy`` in ``eval-full.json``: model, setting, acc %, NFE, TPF."""
    _, _, rows, _ = _eval()
    lines = ["| model | setting | acc % | NFE | TPF |", "|---|---|---:|---:|---:|"]
    lines += [
        f"| {r.model} | {r.setting} | {r.accuracy:.1f} | {r.nfe:.2f} | {r.tokens_per_forward:.2f} |"
        for r in rows
        if r.policy == policy
    ]
    if len(lines) == 2:
        raise ValueError(f"eval-full.json: no row of policy {policy!r}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# the shipped checkpoints' own records (dllm_kernels/addition/assets/*/training.json)
# ------------------------------------------------------------------------------------------------

ASSETS = ROOT / "dllm_kernels" / "addition" / "assets"


def shipped_training() -> str:
    """The held-out records of the shipped trained checkpoints, from their ``training.json``."""
    lines = ["| checkpoint | held-out exact match | problems (seed) | decoding |", "|---|---:|---|---|"]
    for path in sorted(ASSETS.glob("*/training.json")):
        doc = json.loads(path.read_text())
        for label, rec in (("", doc.get("heldout")), (" (monitor)", doc.get("monitor"))):
            if rec:
                lines.append(
                    f"| {path.parent.name}{label} | {rec['exact_match_percent']:.1f} % | {rec['n']} ({rec['seed']}) "
                    f"| {rec['decoding']} |"
                )
    return "\n".join(lines)


def eval_setup() -> str:
    _, doc, rows, table = _eval()
    runs = "".join(f"\n- {run}" for run in doc.get("runs", []))
    return (
        f"{rows[0].n} held-out problems, seed {doc['seed']}, device {doc['device']}, y_max = {table[0].y_max:.1f} "
        f"(the best accuracy of every row). Recorded command: `{doc['command']}`. The runs behind the "
        f"file:{runs}"
    )


SECTIONS = {
    "host-step": host_step_table,
    "host-step-setup": host_step_setup,
    "host-split": host_split_table,
    "host-split-setup": host_split_setup,
    "host-targets": host_targets,
    "eval-summary": eval_summary,
    "eval-setup": eval_setup,
    "eval-diffusion-gemma": lambda: eval_policy_rows("diffusion_gemma"),
    "shipped-training": shipped_training,
}


def documents() -> list[pathlib.Path]:
    """The markdown files whose generated sections this script owns."""
    return [ROOT / "README.md", ROOT / "DESIGN.md", *sorted((ROOT / "docs").glob("*.md"))]


def render(text: str, sections: dict | None = None) -> str:
    """``text`` with the body of every generated section replaced by its current rendering; a
    ValueError for an unknown section name or a BEGIN without its END."""
    sections = SECTIONS if sections is None else sections
    out, pos = [], 0
    for m in BEGIN.finditer(text):
        if m.start() < pos:
            raise ValueError(f"generated section {m.group(1)!r} starts inside another one")
        name = m.group(1)
        if name not in sections:
            raise ValueError(f"unknown generated section {name!r}; known: {', '.join(sections)}")
        end = text.find(END, m.end())
        if end < 0 or BEGIN.search(text, m.end(), end):
            raise ValueError(f"generated section {name!r} has no {END} before the next section")
        out += [text[pos : m.end()], sections[name]().rstrip("\n") + "\n"]
        pos = end
    out.append(text[pos:])
    return "".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="only report stale files (exit status 1)")
    ap.add_argument(
        "--results",
        type=pathlib.Path,
        default=None,
        help="print the generated sections rendered from the JSON files of this folder instead of "
        "bench/results (a trial run: no file is read or written but those JSON files)",
    )
    args = ap.parse_args(argv)
    if args.results is not None:
        global RESULTS
        RESULTS = args.results
        for name, section in SECTIONS.items():
            try:
                text = section()
            except FileNotFoundError as e:  # a folder holding only some of the results
                print(f"<!-- {name}: skipped, no {pathlib.Path(e.filename).name} -->\n")
                continue
            print(f"<!-- {name} -->\n{text}\n")
        return 0
    stale = []
    for path in documents():
        text = path.read_text()
        new = render(text)
        if new != text:
            stale.append(str(path.relative_to(ROOT)))
            if not args.check:
                path.write_text(new)
    if stale:
        print(("stale: " if args.check else "rewrote: ") + ", ".join(stale))
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
