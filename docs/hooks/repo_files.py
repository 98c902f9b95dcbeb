"""mkdocs hook: publish a few files that live outside docs/ (benchmark results, the recipes' and outputs'
READMEs) at their repository paths, so the guide links to them instead of copying them."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

REPO = Path(__file__).resolve().parents[2]
PUBLISHED = ["benchmarks/README.md", "recipes/README.md", "outputs/README.md", "benchmarks/results/*.md",
             "benchmarks/results/*.png"]


def on_files(files, config):
    for pattern in PUBLISHED:
        for path in sorted(REPO.glob(pattern)):
            uri = path.relative_to(REPO).as_posix()
            files.append(File(uri, src_dir=str(REPO), dest_dir=config["site_dir"],
                              use_directory_urls=config["use_directory_urls"]))
    return files
