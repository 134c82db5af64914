"""The documentation states what the code is: the reference pages (variables, command line,
metrics) are the code's own rendering, the code map names what exists and every package,
docs/gpu-products.md carries the product table the code uses, the site builds strictly (no broken
link or anchor, every page in its navigation), and the README is short and links every page."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aim_runtime import settings
from aim_runtime.deploy import monitoring
from aim_runtime.hardware.products import PRODUCTS, isa_supports_fp8, mxfp4_path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "runtime" / "aim_runtime"
DOCS = REPO / "docs"
README = (REPO / "README.md").read_text()
ENVIRONMENT_DOC = (DOCS / "environment.md").read_text()
GPU_PRODUCTS_DOC = (DOCS / "gpu-products.md").read_text()
REGENERATE = "PYTHONPATH=runtime .venv/bin/python -m aim_runtime.cli.reference"


def section(text: str, heading: str) -> str:
    """The body of a `## heading` section, up to the next heading of the same level."""
    start = text.index(f"\n{heading}\n") + len(heading) + 2
    end = text.find("\n## ", start)
    return text[start:] if end < 0 else text[start:end]


def tables(text: str) -> list[list[list[str]]]:
    """The cells of every Markdown table in `text`, without header and separator rows."""
    found: list[list[list[str]]] = []
    lines = [line.strip() for line in text.splitlines()] + [""]
    start = None
    for i, line in enumerate(lines):
        if line.startswith("|") and start is None:
            start = i
        elif not line.startswith("|") and start is not None:
            found.append([[cell.strip() for cell in row.strip("|").split("|")]
                          for row in lines[start + 2:i]])
            start = None
    return found


# --- the reference pages, generated ---------------------------------------------------------------


def test_the_reference_pages_are_what_the_code_generates():
    """Variables (both registries), every command's help, the metrics."""
    from aim_runtime.cli import reference

    assert reference.stale_pages(DOCS) == [], f"regenerate them: `{REGENERATE}`"


def test_the_reference_command_finds_and_rewrites_a_stale_page(tmp_path, capsys):
    from aim_runtime.cli import reference

    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    page = docs / "metrics.md"
    page.write_text(reference.refreshed(page.read_text(), "metrics", "| stale |"))
    assert reference.main(["--docs", str(docs), "--check"]) == 1
    assert "metrics.md: differs from the code" in capsys.readouterr().err
    assert reference.main(["--docs", str(docs)]) == 0
    assert reference.main(["--docs", str(docs), "--check"]) == 0
    assert page.read_text() == (DOCS / "metrics.md").read_text()


def test_the_variables_page_names_every_variable_once():
    block = ENVIRONMENT_DOC.split("<!-- aim-variables:start -->", 1)[1]
    block = block.split("<!-- aim-variables:end -->", 1)[0]
    named = re.findall(r"^\| `(AIM_\w+)` \|", block, flags=re.M)
    assert sorted(named) == sorted(settings.REGISTRY)
    for doc in [REPO / "README.md", *sorted(DOCS.glob("*.md"))]:
        outside = doc.read_text().replace(block, "")
        assert not re.search(r"^\|.*`AIM_\w+`", outside, flags=re.M), (
            f"{doc.name}: a second table of AIM_* variables: describe each variable in "
            "settings.py instead")


# --- the site and the README ----------------------------------------------------------------------


def test_the_site_builds_strictly(tmp_path):
    """MkDocs in strict mode: a broken link or anchor, or a page missing from the navigation,
    fails (mkdocs.yml's validation settings). Every alert's runbook link lands on a heading of
    the built runbooks page (the anchors MkDocs writes, not a guess at them)."""
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                             str(tmp_path / "site")], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "cli" / "index.html").exists()
    runbooks = (tmp_path / "site" / "runbooks" / "index.html").read_text()
    for alert in monitoring.ALERTS:
        page, _, anchor = alert.rule()["annotations"]["runbook_url"].partition("#")
        assert page == "docs/runbooks.md" and f'id="{anchor}"' in runbooks, alert.name


def test_the_readme_is_short_and_links_every_page():
    assert len(README.splitlines()) <= 220
    linked = set(re.findall(r"\]\(docs/([\w.-]+\.md)(?:#[\w-]+)?\)", README))
    pages = {page.name for page in DOCS.glob("*.md")}
    assert pages - linked == set(), f"link these pages from the README: {pages - linked}"
    assert linked - pages == set(), f"the README links pages that do not exist: {linked - pages}"
    assert "](CONTRIBUTING.md)" in README


# --- the code map -----------------------------------------------------------------------------


def code_map_entries() -> list[tuple[str, list[str]]]:
    """(path, the bare file names that follow it) for every `- `path`: ...` item of the map.

    An item starts with the path it describes, relative to the repository; bare file names later
    in the item (`model.py`, `gpu-products.md`) are files inside that folder."""
    body = (DOCS / "code-map.md").read_text()
    items = re.split(r"^- ", body, flags=re.M)[1:]
    entries = []
    for item in items:
        tokens = re.findall(r"`([^`]+)`", item)
        assert tokens and item.startswith(f"`{tokens[0]}`"), f"code map item without a path: {item}"
        names = [t for t in tokens[1:] if re.fullmatch(r"[\w.-]+\.(py|md)", t)]
        entries.append((tokens[0], names))
    return entries


def test_every_path_in_the_code_map_exists():
    entries = code_map_entries()
    assert len(entries) >= 10
    missing = []
    for path, names in entries:
        target = REPO / path
        if not target.exists():
            missing.append(path)
            continue
        folder = target if target.is_dir() else target.parent
        missing += [f"{path} ... {name}" for name in names if not (folder / name).exists()]
    assert not missing, f"docs/code-map.md names what does not exist: {missing}"


def test_code_map_names_every_package_and_top_level_module():
    named = {path.rstrip("/") for path, _ in code_map_entries()}
    packages = sorted(str(init.parent.relative_to(REPO)) for init in PACKAGE.rglob("__init__.py")
                      if init.parent != PACKAGE and "__pycache__" not in init.parts)
    modules = sorted(str(module.relative_to(REPO)) for module in PACKAGE.glob("*.py")
                     if module.name != "__init__.py")
    assert packages, "no packages found under runtime/aim_runtime"
    unnamed = [path for path in packages + modules if path not in named]
    assert not unnamed, f"add these to docs/code-map.md: {unnamed}"


def test_code_map_names_every_top_level_folder():
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                                text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout")
    folders = {path.split("/", 1)[0] for path in listed.split("\0")
               if "/" in path and not path.startswith(".")}
    named = {path.rstrip("/").split("/", 1)[0] for path, _ in code_map_entries()}
    unnamed = sorted(folders - named)
    assert not unnamed, f"add these folders to docs/code-map.md: {unnamed}"


# --- docs/gpu-products.md ------------------------------------------------------------------------


def test_gpu_products_doc_matches_the_product_table():
    rows = tables(section(GPU_PRODUCTS_DOC, "## The table"))[0]
    documented = {}
    for name, isa, target, ids, label, vram, cus, xccs in rows:
        documented[name] = (isa, int(target), tuple(int(i, 16) for i in ids.split(",")),
                            tuple(v.strip() for v in label.split(",")), int(vram), int(cus),
                            int(xccs))
    in_code = {
        p.name: (p.isa, p.gfx_target_version, p.pci_device_ids, p.node_label_values,
                 round(p.vram_gib), p.compute_units, p.xcc_count)
        for p in PRODUCTS.values()
    }
    assert documented == in_code, "docs/gpu-products.md and hardware/products.py disagree"


def test_gpu_products_doc_bandwidth_and_throughput_match_the_product_table():
    rows = tables(section(GPU_PRODUCTS_DOC, "## Bandwidth and peak throughput"))[0]

    def number(cell: str) -> float | None:
        return None if cell == "—" else float(cell)

    documented = {name: (number(hbm), number(bf16), number(fp8), number(mxfp4))
                  for name, hbm, bf16, fp8, mxfp4 in rows}
    in_code = {p.name: (p.hbm_tb_per_s, *(dict(p.peak_dense_tflops).get(precision)
                                          for precision in ("bf16", "fp8", "mxfp4")))
               for p in PRODUCTS.values()}
    assert documented == in_code, "docs/gpu-products.md and hardware/products.py disagree"


def test_gpu_products_doc_names_every_pci_id_and_precision_rule():
    ids_section = section(GPU_PRODUCTS_DOC, "## PCI device ids")
    documented_ids = {int(row[0], 16) for row in tables(ids_section)[0]}
    in_code = {i for p in PRODUCTS.values() for i in p.pci_device_ids}
    assert documented_ids == in_code

    isa_rows = tables(section(GPU_PRODUCTS_DOC, "## The table"))[1]
    isas = {p.isa for p in PRODUCTS.values()}
    assert {row[0] for row in isa_rows} == isas
    for isa, fp8, mxfp4 in isa_rows:
        assert (fp8 == "yes") == isa_supports_fp8(isa), isa
        assert mxfp4 == (mxfp4_path(isa) or "no"), isa


def test_docs_cite_nothing_outside_the_repository():
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text()
        assert "../shared" not in text, doc
        assert "pypi.org" not in text, doc
