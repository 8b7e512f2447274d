"""The module boundary of docs/architecture.md, checked on the source tree.

- the modules under src/ depend on each other without cycles, and exactly as the
  dependency table in docs/architecture.md says;
- the CLI (apps/), the Python bindings (python/src/) and the benchmarks (bench/)
  include the installed API (include/measattn/) and their own files only;
- installed headers include installed headers only.
"""

import re

from conftest import REPO_ROOT

SRC = REPO_ROOT / "src"
INCLUDE = REPO_ROOT / "include" / "measattn"
INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)

# Installed headers that belong to no concept module: the shared vocabulary.
COMMON_HEADERS = {"types", "error", "interrupt", "threads", "progress", "temporaries",
                  "version", "status", "options", "communicator", "mpi"}


def modules():
    return sorted(p.name for p in SRC.iterdir() if p.is_dir())


def header_module(name):
    """The module an include names, or None for an umbrella/system header."""
    if name.startswith("measattn/"):
        stem = name[len("measattn/"):].removesuffix(".hpp")
        if stem == "measattn":
            return None
        return "common" if stem in COMMON_HEADERS else stem
    head = name.split("/")[0]
    return head if (SRC / head).is_dir() else None


def includes(path):
    return INCLUDE_RE.findall(path.read_text(errors="replace"))


def dependency_graph():
    """Module -> the modules its sources or its installed header include."""
    graph = {m: set() for m in modules()}
    for m in graph:
        files = [f for f in (SRC / m).rglob("*") if f.suffix in {".cpp", ".hpp"}]
        files += [h for h in INCLUDE.glob("*.hpp") if header_module("measattn/" + h.name) == m]
        for f in files:
            for inc in includes(f):
                dep = header_module(inc)
                if dep is not None and dep != m:
                    graph[m].add(dep)
    return graph


def documented_graph():
    text = (REPO_ROOT / "docs" / "architecture.md").read_text()
    block = text.split("<!-- module-dependencies -->")[1].split("<!-- /module-dependencies -->")[0]
    graph = {}
    for line in block.splitlines():
        m = re.match(r"^\|\s*`(\w+)`\s*\|\s*([^|]*)\|", line)
        if m:
            deps = {d.strip(" `") for d in m.group(2).split(",") if d.strip(" `-—")}
            graph[m.group(1)] = deps
    return graph


def test_module_graph_is_acyclic():
    graph = dependency_graph()
    state = {}
    path = []

    def visit(m):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", "cycle: " + " -> ".join(path[path.index(m):] + [m])
        state[m] = "open"
        path.append(m)
        for d in sorted(graph.get(m, ())):
            visit(d)
        path.pop()
        state[m] = "done"

    for m in graph:
        visit(m)


def test_docs_table_matches_the_includes():
    assert documented_graph() == dependency_graph()


def test_public_headers_include_public_headers_only():
    for h in sorted(INCLUDE.glob("*.hpp")):
        for inc in includes(h):
            assert inc.startswith("measattn/"), f"{h.relative_to(REPO_ROOT)} includes {inc}"


def test_cli_bindings_and_benchmarks_see_the_installed_api_only():
    for folder in ["apps/measattn", "python/src", "bench"]:
        root = REPO_ROOT / folder
        local = {p.name for p in root.iterdir()}
        for f in sorted(root.glob("*.[ch]pp")):
            for inc in includes(f):
                assert inc.startswith("measattn/") or inc in local, \
                    f"{f.relative_to(REPO_ROOT)} includes the internal header {inc}"
    for cmake in ["apps/CMakeLists.txt", "python/CMakeLists.txt", "bench/CMakeLists.txt"]:
        text = (REPO_ROOT / cmake).read_text()
        assert "PROJECT_SOURCE_DIR}/src" not in text, f"{cmake} puts src/ on an include path"


def tracked_sources():
    import subprocess
    out = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True)
    if out.returncode != 0:  # not a checkout (an exported tree): walk it
        return [p for p in REPO_ROOT.rglob("*") if p.is_file() and ".git" not in p.parts]
    return [REPO_ROOT / f for f in out.stdout.split()]


def test_no_comment_cites_a_file_outside_the_repository():
    # The design notes we were given (THEORY.md, MACHINE.md, STYLE.md in a folder beside
    # the checkout) are not shipped: code and tests cite docs/ instead.
    outside = re.compile(r"THEORY|MACHINE\.md|STYLE\.md|\.\./shared|/work/")
    for f in tracked_sources():
        if f.suffix not in {".cpp", ".hpp", ".py", ".sh", ".txt", ".cmake", ".in", ".pyi"}:
            continue
        if f.name == "test_architecture.py":
            continue
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            assert not outside.search(line), f"{f.relative_to(REPO_ROOT)}:{n}: {line.strip()}"


def test_installed_headers_carry_no_performance_notes():
    notes = re.compile(r"\btuned\b|\bfaster\b|\bslower\b|\bbenchmark|performance\.md|GFLOP|"
                       r"\bns\b|\bus each\b", re.I)
    for h in sorted(INCLUDE.glob("*.hpp")):
        for n, line in enumerate(h.read_text().splitlines(), 1):
            assert not notes.search(line), f"{h.relative_to(REPO_ROOT)}:{n}: {line.strip()}"
