"""The docs stand on their own: every reference to a docs/ file resolves inside the repository,
cited sections exist, papers are cited by authors and title, and nothing cites project-management
issue or step numbers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _files(*, tests: bool) -> list[Path]:
    """README.md, docs/*.md and the Python files under sw, hw, sim, bench (and tests)."""
    files = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    folders = ["sw", "hw", "sim", "bench", "docs"] + (["tests"] if tests else [])
    for folder in folders:
        files += sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)
    return files


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


MD_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
DOCS_MENTION = re.compile(r"(?<![\w./-])docs/[\w./-]*\w")
HEADING = re.compile(r"^#+\s+(\d+(?:\.\d+)*)[.\s]", re.M)
# "<file>.md section 5", "<file>.md, sections 1-2", "[<file>.md](<file>.md) 2.3", "<file>.md 2.3"
SECTION_CITE = re.compile(
    r"(?P<file>(?:docs/)?[\w-]+\.md)(?:\]\([^)]*\))?,?\s+"
    r"(?:(?:sections?\s+(?P<sec>\d+(?:\.\d+)?)(?:\s*-\s*(?P<end>\d+))?)"
    r"|(?P<dotted>\d+\.\d+)\b)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(md: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", md.read_text(), re.M)}


def _sections(md: Path) -> set[str]:
    return set(HEADING.findall(md.read_text()))


def _target(source: Path, ref: str) -> Path:
    return (ROOT / ref) if ref.startswith("docs/") else (source.parent / ref)


@pytest.mark.parametrize("path", _files(tests=True), ids=_rel)
def test_references_to_docs_files_exist(path):
    text = path.read_text()
    missing = []
    if path.suffix == ".md":
        for m in MD_LINK.finditer(text):
            link = m.group(1)
            if re.match(r"[a-z]+:", link):  # http:, https:, mailto:
                continue
            file, _, anchor = link.partition("#")
            target = path if not file else (path.parent / file)
            if not target.exists():
                missing.append(f"link {link}: no file {target.relative_to(ROOT)}")
            elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
                missing.append(f"link {link}: no heading #{anchor} in {_rel(target)}")
    for m in DOCS_MENTION.finditer(text):
        ref = m.group(0).rstrip(".")
        if not (ROOT / ref).exists():
            missing.append(f"{ref}: no such file")
    assert not missing, f"{_rel(path)}: " + "; ".join(missing)


@pytest.mark.parametrize("path", _files(tests=True), ids=_rel)
def test_cited_sections_exist(path):
    text = path.read_text()
    wrong = []
    for m in SECTION_CITE.finditer(text):
        target = _target(path, m.group("file"))
        if not (target.exists() and target.parent == DOCS):
            continue
        sections = _sections(target)
        cited = [m.group("dotted")] if m.group("dotted") else [m.group("sec")]
        if m.group("end"):
            cited += [str(n) for n in range(int(m.group("sec")) + 1, int(m.group("end")) + 1)]
        wrong += [f"{m.group(0)!r}: {_rel(target)} has no section {s}" for s in cited
                  if s not in sections]
    assert not wrong, f"{_rel(path)}: " + "; ".join(wrong)


# Papers are cited by authors and title, never as "the seed" (a random seed is fine: seed=0,
# --seed, split_seed, "training seed", "seed 0").
SEED_CITATIONS = [
    re.compile(r"\bseed's\b", re.I),
    re.compile(r"\bthe seeds?\b(?!\s*(?:=|\d|value))", re.I),
    re.compile(r"\bseeds?\s+(?:Eqs?|Equations?|Tables?|Fig|Figures?|Thm|Theorems?|Alg|"
               r"Algorithms?|A\.\d|papers?|methods?|notes?|error-free|residual|optimal|"
               r"data-driven)\b", re.I),
    re.compile(r"\b(?:other|every|each|all)\s+seeds?\b(?!\s*(?:=|\d))", re.I),
    re.compile(r"\bseeds/"),
]
# Nothing points outside the repository (the design notes are not part of the product).
OUTSIDE = [re.compile(r"shared/(?:design|seeds)\b"), re.compile(r"\.\./shared\b")]
# Project-management references: issue numbers, plan steps.
ISSUE_STEP = [
    re.compile(r"\bissues?\s*#?\d+", re.I),
    re.compile(r"\((?:done,?\s+)?(?:in\s+)?steps?\s+\d+\)", re.I),
    re.compile(r"\bstep-\d+\b", re.I),
    re.compile(r"\b(?:item|deliverable)s?\s+\d+\s+of\b", re.I),
]


@pytest.mark.parametrize("path", _files(tests=False), ids=_rel)
def test_no_seed_citations_issue_or_step_numbers(path):
    text = path.read_text()
    found = []
    for pattern in SEED_CITATIONS + OUTSIDE + ISSUE_STEP:
        for m in pattern.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            found.append(f"line {line}: {m.group(0)!r}")
    assert not found, f"{_rel(path)}: " + "; ".join(found)


@pytest.mark.parametrize("text,bad", [
    ("like the seed's Table 4", True), ("(seed Eq. 10-11)", True), ("the other seeds", True),
    ("done (step 1)", True), ("The lower bound of issue 4", True), ("the step-3 engine", True),
    ("see shared/design/conversion-math.md", True),
    ("--seed SEED training seed (default: 0)", False), ("split_seed=0, seed 1", False),
    ("rng = np.random.default_rng(seed)", False), ("the seed = 3", False),
    ("in steps 3 and 4", False), ("issue cycles", False), ("(seeded)", False),
])
def test_the_patterns_themselves(text, bad):
    hit = any(p.search(text) for p in SEED_CITATIONS + OUTSIDE + ISSUE_STEP)
    assert hit == bad


def test_section_citation_pattern():
    cites = [m.group(0) for m in SECTION_CITE.finditer(
        "docs/conversion-math.md section 5; docs/conversion-math.md, sections 1-2; "
        "[docs/conversion-math.md](conversion-math.md) 2.3; results.md 100 rows")]
    assert len(cites) == 3


def test_the_host_link_protocols_worked_example_decodes():
    """docs/boards.md's example frames, decoded by the host code, say what the text says."""
    from bitspike.boards import protocol as proto

    text = (DOCS / "boards.md").read_text()
    section = text[text.index("Worked example:"):text.index("### Running on a board")]
    block = section[section.index("```") + 3:section.index("```", section.index("```") + 3)]
    frames, label = {}, None
    for line in block.strip().splitlines():
        head, _, rest = line.partition(":")
        if rest and not head.startswith(" "):
            label, line = head.strip(), rest
        frames[label] = frames.get(label, b"") + bytes.fromhex(line.strip())
    request = frames["INFER request"]
    assert request[:2] == bytes([proto.REQUEST_SYNC, proto.Command.INFER])
    from bitspike.sw.data import load_dataset

    first = load_dataset("digits").x_test[0].reshape(-1).tolist()
    assert list(request[4:-2]) == first  # the first digits test image, as the text says
    assert proto.crc16(request[1:]) == 0 and len(request) == 64 + proto.FRAME_OVERHEAD
    assert frames["INFO request"] == proto.encode_request(proto.Command.INFO)
    reply = proto.decode_reply(frames["INFER reply"])
    result = proto.decode_infer(reply.payload, 10)
    stated = re.search(r"decodes to the logits ([-\d,\s]+), the class (\d+) and (\d+) cycles",
                       section)
    logits = [int(v) for v in stated.group(1).replace("\n", " ").split(",")]
    assert list(result.logits) == logits
    assert (result.klass, result.cycles) == (int(stated.group(2)), int(stated.group(3)))
    error = proto.decode_reply(frames["error reply"])
    assert error.error() == (proto.LinkError.BAD_CRC, proto.Command.INFER)
    assert "the error reply is BAD_CRC for an INFER" in section
