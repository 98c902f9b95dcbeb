"""`--device` / `--dtype` of `predict` and `evaluate` (and `Predictor` / `evaluate_adapter`), and texts that
`predict` must refuse (empty, whitespace-only, a lone surrogate) before they reach the tokenizer."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from roberta_lora.cli.main import main
from roberta_lora.errors import ConfigError, DataError
from roberta_lora.evaluation import evaluate as evaluate_module
from roberta_lora.evaluation.evaluate import evaluate_adapter
from roberta_lora.evaluation.predict import Predictor, read_input_file, text_problem
from roberta_lora.model.wrapper import LoraWrapperRoberta

from fixtures_glue import write_glue_fixture

TEXTS = ["a good film", "a bad film", "the cat sat on the mat", "not good at all, a waste", "fine"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without CUDA")


def trained(base_dir: Path, seed: int, **kwargs) -> LoraWrapperRoberta:
    """A model whose adapter tensors all moved away from their initial values (as after training)."""
    model = LoraWrapperRoberta(model_id=str(base_dir), seed=0, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.adapter_state_dict().values():
            tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("device-dtype-adapters")
    trained(tiny_model_dir, 1, num_classes=2, label_names=["negative", "positive"], task="sst2").save_adapter(
        root / "sst2")
    trained(tiny_model_dir, 2, task_type="squad_v1", task="squad_v1").save_adapter(root / "squad")
    return {"sst2": root / "sst2", "squad": root / "squad"}


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("device-dtype-glue")
    write_glue_fixture(root, "sst2", n_train=8, n_dev=24)
    return root


@pytest.fixture()
def no_model_loading(monkeypatch):
    """Fail the test if anything tries to build the model (a flag error must come before that)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was being loaded before the --device / --dtype check")
    monkeypatch.setattr(LoraWrapperRoberta, "from_adapter", classmethod(refuse))


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *names: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert all(name in lines[0] for name in names), err


# ----------------------------------------------------------------------------- Predictor
def test_predictor_in_bfloat16_holds_bf16_weights_on_the_cpu_and_answers_like_float32(adapters, tiny_model_dir):
    full = Predictor(adapters["sst2"], model_id=str(tiny_model_dir), device="cpu")
    half = Predictor(adapters["sst2"], model_id=str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert {p.dtype for p in full.model.parameters()} == {torch.float32}
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in half.model.parameters()} == {"cpu"}
    assert half.device == torch.device("cpu") and half.dtype == torch.bfloat16
    expected, got = full.predict(TEXTS), half.predict(TEXTS)
    assert [r["label"] for r in got] == [r["label"] for r in expected]
    for answer, reference in zip(got, expected, strict=True):
        assert isinstance(answer["score"], float)
        for label, probability in reference["scores"].items():
            assert answer["scores"][label] == pytest.approx(probability, abs=2e-2)
        assert answer["scores"] != reference["scores"], "bf16 weights should round the answers a little"


def test_predictor_in_bfloat16_answers_squad_questions_like_float32(adapters, tiny_model_dir):
    questions, contexts = ["Who sat on the mat?", "Where did it sit?"], ["The cat sat on the mat."] * 2
    full = Predictor(adapters["squad"], model_id=str(tiny_model_dir), device="cpu").predict(questions, contexts)
    half = Predictor(adapters["squad"], model_id=str(tiny_model_dir), device="cpu", dtype="bfloat16").predict(
        questions, contexts)
    assert len(half) == 2
    for answer, reference in zip(half, full, strict=True):
        assert isinstance(answer["answer"], str) and answer["nbest"]
        assert all(isinstance(item[key], float) for item in answer["nbest"]
                   for key in ("probability", "start_logit", "end_logit"))
        by_text = {item["text"]: item for item in reference["nbest"]}
        shared = [item for item in answer["nbest"] if item["text"] in by_text]
        assert shared, (answer["nbest"], reference["nbest"])
        for item in shared:  # bf16 rounds each layer's output to 8 bits of mantissa: a few hundredths here
            assert item["start_logit"] == pytest.approx(by_text[item["text"]]["start_logit"], abs=0.1)
            assert item["end_logit"] == pytest.approx(by_text[item["text"]]["end_logit"], abs=0.1)


@NO_CUDA
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "CUDA:1"])
def test_predictor_refuses_cuda_where_there_is_none_before_loading(device, tmp_path, no_model_loading):
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        Predictor(tmp_path / "no-such-adapter", device=device)


@pytest.mark.parametrize(("device", "dtype", "message"), [
    ("gpu", "float32", "is not one of auto, cpu, cuda, cuda:N"),
    ("cuda:x", "float32", "is not one of auto, cpu, cuda, cuda:N"),
    ("cpu", "float16", "float16 needs a CUDA device"),
    ("cpu", "fp16", "is not one of float32, bfloat16, float16"),
])
def test_predictor_refuses_bad_device_or_dtype_before_loading(device, dtype, message, tmp_path, no_model_loading):
    with pytest.raises(ConfigError, match=message):
        Predictor(tmp_path / "no-such-adapter", device=device, dtype=dtype)


# ----------------------------------------------------------------------------- evaluate_adapter
def test_evaluate_in_bfloat16_runs_a_bf16_model_and_scores_close_to_float32(adapters, glue_dir, tiny_model_dir,
                                                                            monkeypatch, tmp_path):
    seen = []
    real_run_model = evaluate_module.run_model

    def spy(model, *args, **kwargs):
        parameter = next(model.parameters())
        seen.append((parameter.dtype, parameter.device.type))
        return real_run_model(model, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "run_model", spy)
    common = {"data_dir": glue_dir, "model_id": str(tiny_model_dir), "batch_size": 8, "progress": False,
              "cache_dir": tmp_path / "cache"}
    full = evaluate_adapter(adapters["sst2"], output_dir=tmp_path / "full", **common)
    half = evaluate_adapter(adapters["sst2"], output_dir=tmp_path / "half", device="cpu", dtype="bfloat16", **common)
    assert seen == [(torch.float32, "cpu"), (torch.bfloat16, "cpu")]
    assert set(half) == set(full) == {"accuracy"}
    assert half["accuracy"] == pytest.approx(full["accuracy"], abs=2 / 24 + 1e-9)

    def predictions(name: str) -> list[int]:
        lines = (tmp_path / name / "validation" / "predictions.jsonl").read_text().splitlines()
        return [json.loads(line)["prediction"] for line in lines]

    agree = sum(a == b for a, b in zip(predictions("half"), predictions("full"), strict=True))
    assert agree >= 22, f"bf16 and float32 disagree on {24 - agree} of 24 examples"


@NO_CUDA
def test_evaluate_refuses_cuda_and_cpu_float16_before_loading(adapters, glue_dir, no_model_loading):
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        evaluate_adapter(adapters["sst2"], data_dir=glue_dir, device="cuda:0")
    with pytest.raises(ConfigError, match="float16 needs a CUDA device"):
        evaluate_adapter(adapters["sst2"], data_dir=glue_dir, device="cpu", dtype="float16")


def test_evaluation_device_follows_the_accelerator_for_auto_and_refuses_a_fixed_one_across_processes():
    one = SimpleNamespace(num_processes=1, device=torch.device("cpu"))
    four = SimpleNamespace(num_processes=4, device=torch.device("cpu"))
    assert evaluate_module.evaluation_device("auto", one) == torch.device("cpu")
    assert evaluate_module.evaluation_device("AUTO", four) == torch.device("cpu")
    assert evaluate_module.evaluation_device("cpu", one) == torch.device("cpu")
    with pytest.raises(ConfigError, match="--device cpu with 4 processes.*leave --device auto"):
        evaluate_module.evaluation_device("cpu", four)


# ----------------------------------------------------------------------------- the CLI flags
def test_cli_evaluate_with_bfloat16_prints_metrics(adapters, glue_dir, tiny_model_dir, tmp_path, capsys):
    code, out, err = cli(capsys, "evaluate", "--adapter", str(adapters["sst2"]), "--model", str(tiny_model_dir),
                         "--data-dir", str(glue_dir), "--batch-size", "8", "--no-progress", "--cache-dir",
                         str(tmp_path / "cache"), "--device", "cpu", "--dtype", "bfloat16")
    assert code == 0, err
    assert 0.0 <= json.loads(out)["accuracy"] <= 1.0


def test_cli_predict_with_bfloat16_answers(adapters, tiny_model_dir, capsys):
    code, out, err = cli(capsys, "predict", "--adapter", str(adapters["sst2"]), "--model", str(tiny_model_dir),
                         "--text", "a good film", "--text", "a bad film", "--device", "cpu", "--dtype", "bfloat16")
    assert code == 0, err
    answers = [json.loads(line) for line in out.splitlines()]
    assert len(answers) == 2 and all(a["label"] in ("negative", "positive") for a in answers)


def command(name: str, adapter: Path, glue: Path) -> list[str]:
    if name == "predict":
        return ["predict", "--adapter", str(adapter), "--text", "a good film"]
    return ["evaluate", "--adapter", str(adapter), "--data-dir", str(glue), "--no-progress"]


@NO_CUDA
@pytest.mark.parametrize("name", ["predict", "evaluate"])
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cli_cuda_without_cuda_is_one_line(name, device, adapters, glue_dir, capsys, no_model_loading):
    code, _, err = cli(capsys, *command(name, adapters["sst2"], glue_dir), "--device", device)
    assert_one_line_error(code, err, f"roberta-lora {name}: error:", f"--device {device}", "--device cpu")


@pytest.mark.parametrize("name", ["predict", "evaluate"])
@pytest.mark.parametrize(("flags", "names"), [
    (("--device", "gpu"), ("--device 'gpu'", "cuda:N")),
    (("--device", "cpu", "--dtype", "float16"), ("--dtype float16", "bfloat16")),
])
def test_cli_bad_device_or_dtype_is_one_line(name, flags, names, adapters, glue_dir, capsys, no_model_loading):
    code, _, err = cli(capsys, *command(name, adapters["sst2"], glue_dir), *flags)
    assert_one_line_error(code, err, f"roberta-lora {name}: error:", *names)


@NO_CUDA
def test_cli_float16_with_the_default_device_is_refused_on_this_cpu_machine(adapters, glue_dir, capsys,
                                                                           no_model_loading):
    code, _, err = cli(capsys, *command("predict", adapters["sst2"], glue_dir), "--dtype", "float16")
    assert_one_line_error(code, err, "--dtype float16")


def test_cli_unknown_dtype_is_an_argparse_error(adapters, glue_dir, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(command("predict", adapters["sst2"], glue_dir) + ["--dtype", "fp16"])
    assert exit_.value.code == 2
    assert "--dtype" in capsys.readouterr().err


# ----------------------------------------------------------------------------- texts predict refuses
@pytest.mark.parametrize(("text", "problem"), [
    ("", "is empty"),
    ("   ", "holds nothing to read (only 3 whitespace, control or zero-width characters)"),
    ("\t\n", "holds nothing to read (only 2 whitespace"),
    ("\u200b", "holds nothing to read (only 1 whitespace, control or zero-width character)"),
    (5, "is not a string (got the int 5)"),
    ("bad \ud800 x", "a lone surrogate \\ud800 at character 5)"),
    ("caf" + os.fsdecode(b"\xff"), "a lone surrogate \\udcff at character 4)"),
])
def test_text_problem_names_what_is_wrong(text, problem):
    assert problem in text_problem(text)


def test_text_problem_names_the_byte_behind_a_command_line_surrogate():
    assert "a lone surrogate \\udcff at character 4, which stands for the byte 0xff)" in text_problem(
        "caf" + os.fsdecode(b"\xff"), from_argv=True)
    assert text_problem("bad \ud800 x", from_argv=True).endswith("at character 5)")  # not a decoded byte


@pytest.mark.parametrize("text", ["a good film", "caf\u00e9", "\U0001f600 emoji", " padded "])
def test_text_problem_accepts_real_text(text):
    assert text_problem(text) is None


def test_predictor_refuses_a_lone_surrogate_with_its_index(adapters, tiny_model_dir):
    predictor = Predictor(adapters["sst2"], model_id=str(tiny_model_dir), device="cpu")
    with pytest.raises(ConfigError, match=r"texts\[1\] is not valid UTF-8 text"):
        predictor.predict(["fine", "caf\udcff"])
    with pytest.raises(ConfigError, match=r"text_pairs\[0\] holds nothing to read"):
        predictor.predict(["fine"], [" "])


@pytest.mark.parametrize(("texts", "message"), [
    (["a good film", "caf" + os.fsdecode(b"\xff")], "--text 2 is not valid UTF-8 text (a lone surrogate \\udcff"),
    (["caf" + os.fsdecode(b"\xfe")], "--text is not valid UTF-8 text (a lone surrogate \\udcfe at character 4"),
    ([""], "--text is empty"),
    (["fine", "   "], "--text 2 holds nothing to read"),
])
def test_cli_predict_refuses_bad_text_naming_the_flag(texts, message, adapters, capsys, no_model_loading):
    argv = ["predict", "--adapter", str(adapters["sst2"])]
    for text in texts:
        argv += ["--text", text]
    code, out, err = cli(capsys, *argv)
    assert_one_line_error(code, err, message, "pass non-empty UTF-8 text")
    assert out == ""


def test_cli_predict_refuses_a_bad_text_pair(adapters, capsys, no_model_loading):
    code, _, err = cli(capsys, "predict", "--adapter", str(adapters["sst2"]), "--text", "a", "--text", "b",
                       "--text-pair", "fine", "--text-pair", "x\udc80")
    assert_one_line_error(code, err, "--text-pair 2 is not valid UTF-8 text", "byte 0x80")


def test_input_file_errors_name_the_files_own_line_and_field(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "fine"}\n\n\n{"text": "bad \\ud800 x"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r'in\.jsonl:4: "text" is not valid UTF-8 text \(a lone surrogate \\ud800 '
                                        r'at character 5\); write the character itself'):
        read_input_file(path)
    path.write_text('{"question": "who?", "context": "   "}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r'in\.jsonl:1: "context" holds nothing to read'):
        read_input_file(path)
    path.write_text('{"text": "a", "text_pair": "b"}\n{"text": ""}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r'in\.jsonl:2: "text" is empty; give "text" a string'):
        read_input_file(path)
    text_file = tmp_path / "in.txt"
    text_file.write_text("a good film\n\n   \n\u200b\u200b\nfine\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"in\.txt:4: the line holds nothing to read"):
        read_input_file(text_file)
    text_file.write_text("a good film\n\n   \nfine\n", encoding="utf-8")
    assert read_input_file(text_file) == (["a good film", "fine"], None)
    path.write_text('{"text": "a \\ud83d\\ude00 pair is fine", "text_pair": "b"}\n', encoding="utf-8")
    assert read_input_file(path) == (["a \U0001f600 pair is fine"], ["b"])
    path.write_text('{"text": "one\u2028line", "text_pair": "b"}\r\n{"text": "two", "text_pair": "c\u0085d"}\n',
                    encoding="utf-8")
    assert read_input_file(path) == (["one\u2028line", "two"], ["b", "c\u0085d"])
