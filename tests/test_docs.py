"""Documentation cites only what the repository holds: every ``DESIGN.md N.M`` in the code is a
section of DESIGN.md, and nothing cites the team's notes outside the repository."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = sorted(
    p
    for folder in ("dllm_kernels", "kernels", "reference", "bench", "tests", "scripts")
    for p in (ROOT / folder).rglob("*")
    if p.suffix in (".py", ".sh", ".md") and p != pathlib.Path(__file__)
)
# the notes the project was designed from, which are not shipped with it
OUTSIDE = (
    "../shared",
    "shared/reference",
    "dllm-decoding-algorithms.md",
    "sglang-on-cpu.md",
    "triton-kernel-practices.md",
    "STYLE.md",
)


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
    documents = [*SOURCES, ROOT / "README.md", ROOT / "DESIGN.md"]
    found = [(str(p.relative_to(ROOT)), name) for p in documents for name in OUTSIDE if name in p.read_text()]
    assert not found, found
