"""`report`: finished runs built on disk (no training) collected into results.md, results.csv, results.png."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from roberta_lora.cli import main as cli_main
from roberta_lora.cli import report as report_cli
from roberta_lora.data.recipes import RECIPES_DIR_ENV, recipes_dir
from roberta_lora.errors import ConfigError
from roberta_lora.training.report import MARKDOWN_MARKER, write_report
from roberta_lora.training.rundir import FINAL_ADAPTER, MARKER
from roberta_lora.training.seeds import write_summary

# Validation metrics per epoch of each seed (GLUE scale 0-1). The best epoch is chosen by the main metric.
RTE = {0: [{"accuracy": 0.70}, {"accuracy": 0.78}, {"accuracy": 0.75}],
       1: [{"accuracy": 0.72}, {"accuracy": 0.80}, {"accuracy": 0.79}],
       2: [{"accuracy": 0.74}, {"accuracy": 0.76}, {"accuracy": 0.77}]}
# CoLA: the epoch with the best MCC is not the one with the best accuracy.
COLA = {0: [{"matthews_correlation": 0.55, "accuracy": 0.84}, {"matthews_correlation": 0.60, "accuracy": 0.83}],
        1: [{"matthews_correlation": 0.62, "accuracy": 0.82}, {"matthews_correlation": 0.58, "accuracy": 0.85}],
        2: [{"matthews_correlation": 0.50, "accuracy": 0.80}, {"matthews_correlation": 0.64, "accuracy": 0.86}]}
# STS-B: best Pearson at epoch 2, where Spearman (0.885) is not its best (0.895).
STSB = [{"pearson": 0.88, "spearmanr": 0.87}, {"pearson": 0.90, "spearmanr": 0.885},
        {"pearson": 0.89, "spearmanr": 0.895}]
PAPER = {"cola": 63.4, "rte": 86.6, "stsb": 91.5, "mnli": 87.5}
PAPER_TOML = """\
source = "Hu et al. 2021, LoRA, Table 2"

[metrics]
cola = "matthews_correlation"
rte = "accuracy"
stsb = "{stsb_metric}"
mnli = "accuracy"

[lora-paper-base]
cola = 63.4
rte = 86.6
stsb = 91.5
mnli = 87.5

[lora-paper-large]
cola = 68.2
rte = 94.9
"""


def fake_run(run_dir: Path, task: str, seed: int, epochs: list[dict], finished: bool = True) -> Path:
    """A run folder as train leaves it, without training: marker, config.json, metrics.jsonl, adapter/."""
    run_dir.mkdir(parents=True)
    (run_dir / MARKER).write_text('{"format": 1}\n')
    config = {"task": task, "method": "lora", "recipe": "lora-paper-base", "seed": seed}
    (run_dir / "config.json").write_text(json.dumps(config))
    records = [{"epoch": i + 1, "train_loss": 0.5, **{f"eval_{k}": v for k, v in m.items()}}
               for i, m in enumerate(epochs)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if finished:
        (run_dir / FINAL_ADAPTER).mkdir()
    return run_dir


def seed_group(group: Path, task: str, seeds: dict[int, list[dict]]) -> Path:
    for seed, epochs in seeds.items():
        fake_run(group / f"seed-{seed}", task, seed, epochs)
    write_summary(group)
    return group


def best_median(seeds: dict[int, list[dict]], metric: str) -> float:
    """Independently: the median over seeds of each seed's best value, in percent."""
    return 100 * statistics.median(max(epoch[metric] for epoch in epochs) for epochs in seeds.values())


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    """rte and cola seed groups (3 seeds each), one stsb run, one unfinished mrpc run."""
    root = tmp_path / "outputs"
    seed_group(root / "rte-seeds", "rte", RTE)
    seed_group(root / "nested" / "cola-seeds", "cola", COLA)
    fake_run(root / "stsb-run", "stsb", 0, STSB)
    fake_run(root / "mrpc-run", "mrpc", 0, [{"accuracy": 0.8, "f1": 0.85}], finished=False)
    return root


@pytest.fixture()
def paper_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A paper_results.toml of our own (the real one may not exist yet); returns a writer for variants."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    monkeypatch.setenv(RECIPES_DIR_ENV, str(folder))

    def write(stsb_metric: str = "pearson") -> Path:
        path = folder / "paper_results.toml"
        path.write_text(PAPER_TOML.format(stsb_metric=stsb_metric))
        return path

    write()
    return write


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as handle:
        return {row["task"]: row for row in csv.DictReader(handle)}


def run_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """The real `roberta-lora` main (its error handling included) with the report command registered."""
    if report_cli not in cli_main.COMMAND_MODULES:
        monkeypatch.setattr(cli_main, "COMMAND_MODULES", (*cli_main.COMMAND_MODULES, report_cli))
    code = cli_main.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_medians_paper_and_glue_average(runs: Path, paper_file) -> None:
    report = write_report(runs, compare="lora-paper-base")
    rows = read_csv(runs / "results.csv")
    assert list(rows) == ["cola", "stsb", "rte"]  # GLUE order; the unfinished mrpc run is not a row
    expected = {"rte": best_median(RTE, "accuracy"), "cola": best_median(COLA, "matthews_correlation"),
                "stsb": 90.0}
    for task, median in expected.items():
        row = rows[task]
        assert float(row["median"]) == pytest.approx(median, abs=1e-6)
        assert float(row["paper"]) == PAPER[task]
        assert float(row["difference"]) == pytest.approx(median - PAPER[task], abs=1e-6)
        assert (row["method"], row["recipe"]) == ("lora", "lora-paper-base")
    assert rows["rte"]["metric"] == "accuracy" and rows["cola"]["metric"] == "matthews_correlation"
    assert rows["rte"]["n_seeds"] == "3" and rows["stsb"]["n_seeds"] == "1"
    assert float(rows["rte"]["min"]) == pytest.approx(77.0) and float(rows["rte"]["max"]) == pytest.approx(80.0)
    assert float(rows["cola"]["std"]) == pytest.approx(100 * statistics.stdev([0.60, 0.62, 0.64]))
    [average] = report.averages
    assert average.tasks == ["cola", "stsb", "rte"]
    # The GLUE average is over task scores (STS-B: Pearson and Spearman at the best epoch, 0.90 and 0.885), as
    # train-all's; the paper's single metric per task is compared on its own row.
    scores = {**expected, "stsb": 100 * (0.90 + 0.885) / 2}
    assert float(rows["stsb"]["task_score"]) == pytest.approx(scores["stsb"])
    assert average.ours == pytest.approx(statistics.fmean(scores.values()))
    assert average.ours_in_paper_metrics == pytest.approx(statistics.fmean(expected.values()))
    assert average.paper == pytest.approx(statistics.fmean(PAPER[t] for t in expected))
    markdown = (runs / "results.md").read_text()
    assert markdown.startswith(MARKDOWN_MARKER) and markdown.endswith(report.markdown)
    assert f"| **GLUE average** | 3 tasks | {average.ours:.2f} |" in markdown
    assert (f"| mean of the paper's metrics | 3 tasks | {average.ours_in_paper_metrics:.2f} |  |  |  | "
            f"{average.paper:.2f} | {average.ours_in_paper_metrics - average.paper:+.2f} |") in markdown
    assert "GLUE average over cola, stsb, rte: the mean of the task scores" in markdown
    assert "mrpc-run" in markdown.split("Skipped")[1]  # the unfinished run is listed as skipped
    assert [s.path.name for s in report.skipped] == ["mrpc-run"]


def test_without_compare_uses_main_metric_and_no_paper(runs: Path) -> None:
    report = write_report(runs)
    rows = read_csv(runs / "results.csv")
    assert rows["stsb"]["metric"] == "pearson" and rows["stsb"]["paper"] == "" and rows["stsb"]["difference"] == ""
    assert "paper" not in report.markdown.splitlines()[4]  # the table's header
    assert report.averages[0].paper is None


def test_compare_uses_the_papers_metric_at_the_best_epoch(runs: Path, paper_file) -> None:
    paper_file(stsb_metric="spearmanr")
    write_report(runs, compare="lora-paper-base")
    row = read_csv(runs / "results.csv")["stsb"]
    assert row["metric"] == "spearmanr"
    assert float(row["median"]) == pytest.approx(88.5)  # Spearman at the best-Pearson epoch, not its own best


def test_glue_average_leaves_out_tasks_without_a_published_number(runs: Path, paper_file) -> None:
    fake_run(runs / "wnli-run", "wnli", 0, [{"accuracy": 0.56}])
    report = write_report(runs, compare="lora-paper-base")
    assert report.averages[0].tasks == ["cola", "stsb", "rte"] and report.averages[0].left_out == ["wnli"]
    assert "left out (no published number): wnli" in report.markdown
    assert read_csv(runs / "results.csv")["wnli"]["paper"] == ""


def test_png_is_a_readable_image(runs: Path, paper_file) -> None:
    import matplotlib.image

    write_report(runs, compare="lora-paper-base")
    png = runs / "results.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 10_000 < png.stat().st_size < 2_000_000
    height, width = matplotlib.image.imread(png).shape[:2]
    assert width >= 600 and height >= 400


def test_output_folder_gets_results_files_only(runs: Path, tmp_path: Path) -> None:
    target = tmp_path / "report"
    before = sorted(p for p in runs.rglob("*"))
    write_report(runs, destination=target)
    write_report(runs, destination=target)  # its own results.* files are replaced
    assert sorted(p.name for p in target.iterdir()) == ["results.csv", "results.md", "results.png"]
    assert sorted(p for p in runs.rglob("*")) == before


def test_foreign_results_files_are_not_overwritten(runs: Path, tmp_path: Path) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "results.csv").write_text("my,own\n")
    with pytest.raises(ConfigError, match="did not write"):
        write_report(runs, destination=target)
    assert (target / "results.csv").read_text() == "my,own\n"


def test_seed_finished_after_the_summary_is_listed(runs: Path) -> None:
    fake_run(runs / "rte-seeds" / "seed-3", "rte", 3, [{"accuracy": 0.9}])
    report = write_report(runs)
    assert read_csv(runs / "results.csv")["rte"]["n_seeds"] == "3"
    assert any(s.path.name == "seed-3" and "after summary.json" in s.reason for s in report.skipped)


def test_cli_prints_the_table(runs: Path, paper_file, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    code, out, _ = run_cli(["report", str(runs), "--compare", "lora-paper-base"], monkeypatch, capsys)
    assert code == 0
    assert "| task | metric | median | range | std | n | paper | diff |" in out
    assert "| rte | accuracy | 78.00 | [77.00, 80.00] |" in out and "| 86.60 | -8.60 |" in out


ERROR_CASES = {  # argv after `report`, and what the one error line must say
    "missing": (["{tmp}/nowhere"], "does not exist"),
    "empty": (["{tmp}/empty"], "holds no finished run;"),
    "only-unfinished": (["{runs}/mrpc-run"], "holds no finished run (1 unfinished or unreadable"),
    "unknown-compare": (["{runs}", "--compare", "lora-paper-huge"], "expected one of: lora-paper-base, lora-paper-large"),
    "output-is-a-file": (["{runs}", "--output", "{runs}/stsb-run/config.json"], "is a file"),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_cli_errors_are_one_line(case: str, runs: Path, tmp_path: Path, paper_file, monkeypatch, capsys) -> None:
    (tmp_path / "empty").mkdir()
    args, message = ERROR_CASES[case]
    argv = ["report", *(a.format(tmp=tmp_path, runs=runs) for a in args)]
    code, out, err = run_cli(argv, monkeypatch, capsys)
    errors = [line for line in err.splitlines() if line.startswith("roberta-lora report: error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err and out == ""
    assert message in errors[0]
    assert not list(runs.rglob("results.*")) and not list(tmp_path.glob("*/results.*"))


@pytest.mark.skipif(not (recipes_dir() / "paper_results.toml").is_file(),
                    reason="recipes/paper_results.toml not written yet")
def test_the_bundled_paper_results_compare(runs: Path) -> None:
    report = write_report(runs, compare="lora-paper-base")
    assert all(row.paper is not None for row in report.rows)
