"""The layering of ARCHITECTURE.md holds: import-linter's contracts pass, they do catch an upward
import, and the package face and the CLI parser start without torch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports())"]


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(LINT, cwd=root, env={"PYTHONPATH": str(root), "PATH": ""}, capture_output=True, text=True,
                          timeout=120)


def test_the_import_contracts_hold() -> None:
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "4 kept, 0 broken" in done.stdout


def test_an_upward_import_breaks_the_contracts(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "roberta_lora", tmp_path / "roberta_lora")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / "roberta_lora" / "lora" / "targets.py").open("a") as handle:
        handle.write("\n\ndef _upward():\n    import roberta_lora.training.loop  # noqa: F401  (even inside a function)\n")
    done = lint(tmp_path)
    assert done.returncode != 0
    assert "roberta_lora.lora.targets -> roberta_lora.training.loop" in done.stdout  # named in the report
    assert "Layers point one way" in done.stdout and "BROKEN" in done.stdout


def run_fresh(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=ROOT).stdout.strip()


def test_import_help_and_argument_errors_load_no_torch() -> None:
    loaded = "print(sorted(m for m in ('torch', 'transformers', 'accelerate', 'datasets') if m in sys.modules))"
    assert run_fresh(f"import sys, roberta_lora; {loaded}") == "[]"
    for argv in (["--help"], ["train", "--help"], ["train", "--task", "sst2", "--rank", "abc"], ["nosuchcommand"]):
        code = ("import contextlib, io, sys\nfrom roberta_lora.cli.main import main\n"
                "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
                f"    try:\n        main({argv!r})\n    except SystemExit:\n        pass\n{loaded}")
        assert run_fresh(code) == "[]", argv


def test_the_lazy_face_gives_the_documented_names() -> None:
    import roberta_lora
    from roberta_lora.lora.layer import LoraLinear
    from roberta_lora.model.wrapper import LoraWrapperRoberta

    assert roberta_lora.LoraWrapperRoberta is LoraWrapperRoberta and roberta_lora.LoraLinear is LoraLinear
    assert set(roberta_lora.__all__) <= set(dir(roberta_lora))
    for name in roberta_lora.__all__:
        assert getattr(roberta_lora, name) is not None


def test_import_paths_that_readme_documented_before_the_layout_still_work(tiny_model_dir) -> None:
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from roberta_lora.merge_export import load_merged
        from roberta_lora.multi_adapter import MultiAdapterPredictor
    from roberta_lora.adapters.merge import load_merged as current_load_merged
    from roberta_lora.adapters.mixed import MultiAdapterPredictor as current_predictor

    assert load_merged is current_load_merged and MultiAdapterPredictor is current_predictor
    assert sum(issubclass(w.category, DeprecationWarning) for w in caught) >= 1
    import torch

    from roberta_lora.model.wrapper import LoraWrapperRoberta

    model = LoraWrapperRoberta(model_id=str(tiny_model_dir), seed=0)  # a single model is accepted too
    result = MultiAdapterPredictor(model).predict(torch.tensor([[0, 5, 6, 2]]), None, ["default"])
    assert result[0]["adapter"] == "default" and result[0]["logits"].shape == (2,)
