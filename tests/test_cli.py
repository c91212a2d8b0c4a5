"""The ``medverl`` command line: rewards list and score."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medverl.cli import main

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "predictions.jsonl"


def test_rewards_list_shows_builtins_and_plugins(capsys) -> None:
    assert main(["rewards", "list", "--plugins", str(REPO / "reward_fns" / "icd10_example.py")]) == 0
    out = capsys.readouterr().out
    assert "| multiple_choice | built-in | Exact match of one option letter" in out
    assert "| icd10 | " in out and "icd10_example.py" in out


def test_score_bundled_example(tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "scores"
    assert main(["score", "--input", str(EXAMPLE), "--output", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "| query_type | n | score | acc | format pass | parse failures |" in out
    assert "| data_source | n |" in out
    assert (out_dir / "report.md").read_text() in out
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["read"] == manifest["written"] == 33 and manifest["rejected"] == 0 and manifest["complete"]
    rows = [json.loads(line) for line in (out_dir / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == sum(1 for line in EXAMPLE.read_text().splitlines() if line.strip())
    by_id = {r["id"]: r for r in rows}
    assert by_id["pmc_vqa-003"]["reason"] == "hedge: names options B and C"  # "B or C"
    assert by_id["vqa_rad-015"]["pred"] == "" and by_id["vqa_rad-015"]["acc"] == 0.0  # "Nodule" is not "no"
    assert {"line", "data_source", "query_type", "score", "acc", "format", "pred", "reason"} <= set(rows[0])


def _table_row(out: str, name: str) -> list[str]:
    line = next(line for line in out.splitlines() if line.startswith(f"| {name} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_score_table_counts(tmp_path: Path, capsys) -> None:
    rows = [
        {"solution_str": "<answer>B</answer>", "ground_truth": "B", "query_type": "multiple_choice", "data_source": "a"},
        {"solution_str": "<answer>B or C</answer>", "ground_truth": "B", "query_type": "multiple_choice", "data_source": "a"},
        {"solution_str": "B", "ground_truth": "B", "query_type": "multiple_choice", "data_source": "b"},
        {"solution_str": "<answer>yes</answer>", "ground_truth": "yes", "extra_info": {"query_type": "yes_no"}},
    ]
    preds = tmp_path / "p.jsonl"
    preds.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main(["score", "--input", str(preds), "--format-weight", "0.2"]) == 0
    out = capsys.readouterr().out
    # parse failures: "B or C" (no choice read) and the bare "B" (no <answer>), as eval score counts them
    assert _table_row(out, "multiple_choice") == ["multiple_choice", "3", "0.400", "0.333", "66.7%", "2"]
    assert _table_row(out, "yes_no") == ["yes_no", "1", "1.000", "1.000", "100.0%", "0"]
    assert _table_row(out, "unknown")[1] == "1"  # rows without data_source


def test_bad_rows_are_listed_not_dropped(tmp_path: Path, capsys) -> None:
    preds = tmp_path / "p.jsonl"
    preds.write_text(
        "\n".join(
            [
                json.dumps({"solution_str": "<answer>B</answer>", "ground_truth": "B", "query_type": "multiple_choice"}),
                "{not json",
                json.dumps({"solution_str": "x", "query_type": "yes_no"}),
                json.dumps({"solution_str": "x", "ground_truth": "B", "query_type": "multiple_choise"}),
                json.dumps({"solution_str": "x", "ground_truth": "maybe", "query_type": "yes_no"}),
                json.dumps(["a list"]),
            ]
        )
        + "\n"
    )
    out_dir = tmp_path / "scores"
    assert main(["score", "--input", str(preds), "--output", str(out_dir)]) == 1
    captured = capsys.readouterr()
    assert "5 row(s) could not be scored" in captured.err
    rejects = [json.loads(line) for line in (out_dir / "rejects.jsonl").read_text().splitlines()]
    assert [(r["index"], r["source"]) for r in rejects] == [(n, f"p.jsonl:{n}") for n in (2, 3, 4, 5, 6)]
    assert [r["code"] for r in rejects] == ["malformed_json", "missing_field", "unknown_query_type",
                                            "invalid_reference", "not_an_object"]
    reasons = [r["reason"] for r in rejects]
    assert reasons[0].startswith("malformed JSON")
    assert "missing field(s) ground_truth" in reasons[1]
    assert "Did you mean 'multiple_choice'" in reasons[2]
    assert "not a yes or a no" in reasons[3]
    assert "must be a JSON object" in reasons[4]
    assert len((out_dir / "samples.jsonl").read_text().splitlines()) == 1
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert (manifest["read"], manifest["written"], manifest["rejected"]) == (6, 1, 5)
    assert main(["score", "--input", str(preds), "--output", str(out_dir)]) == 2  # a directory in use
    assert "use a new directory" in capsys.readouterr().err


def test_missing_input_file_is_a_clean_error(capsys) -> None:
    assert main(["score", "--input", "/nonexistent/preds.jsonl"]) == 2
    assert "medverl score: error: input file not found" in capsys.readouterr().err


def test_bad_option_is_a_clean_error(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:  # checked as the options are parsed
        main(["score", "--input", str(EXAMPLE), "--format-weight", "2"])
    assert exit_.value.code == 2 and "--format-weight: must be in [0, 1], got 2" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    out = subprocess.run(
        [str(Path(sys.executable).with_name("medverl")), "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("medverl ")


def test_score_reads_stdin() -> None:
    line = json.dumps({"solution_str": "<answer>no</answer>", "ground_truth": "no", "query_type": "yes_no"})
    out = subprocess.run(
        [sys.executable, "-m", "medverl", "score", "--input", "-"], input=line, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "| yes_no | 1 | 1.000 | 1.000 | 100.0% | 0 |" in out.stdout


def _rl_row(index: int, ground_truth: str, query_type: str, options: str = "") -> dict:
    return {
        "data_source": "pmc_vqa",
        "prompt": [{"role": "user", "content": "<image>Which finding?"}],
        "images": [],
        "ability": "medical_vqa",
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": {"split": "train", "index": index, "query_type": query_type, "options": options},
    }


def test_rewards_check_finds_rows_no_answer_can_match(tmp_path: Path, capsys) -> None:
    import pandas as pd

    options = json.dumps(["Edema", "Pneumonia", "Effusion"])
    rows = [
        _rl_row(0, "B", "multiple_choice", options),
        _rl_row(1, "Pneumonia", "multiple_choice", options),
        _rl_row(2, "D", "multiple_choice", options),  # no option D
        _rl_row(3, "yes", "yes_no"),
        _rl_row(4, "maybe", "yes_no"),  # not a yes or a no
        _rl_row(5, "left lung", "jacard"),  # typo
        _rl_row(6, "", "jaccard"),  # empty reference
    ]
    path = tmp_path / "train.parquet"
    pd.DataFrame(rows).to_parquet(path)
    assert main(["rewards", "check", str(path)]) == 1
    captured = capsys.readouterr()
    assert "| multiple_choice | 2 |" in captured.out and "| yes_no | 1 |" in captured.out
    assert "3 row(s) cannot be scored" in captured.err
    for index in (2, 4, 6):
        assert f"(index={index}, pmc_vqa)" in captured.err
    assert "1 row(s) not checked" in captured.err  # the typo is not registered: its rows are not checked
    assert "  jacard: 1 row(s); unknown query_type 'jacard'. Did you mean 'jaccard'?" in captured.err

    pd.DataFrame(rows[:2]).to_parquet(path)
    assert main(["rewards", "check", str(path)]) == 0
    assert "all 2 references can be scored" in capsys.readouterr().out


def test_rewards_check_rejects_a_parquet_that_is_not_rl(tmp_path: Path, capsys) -> None:
    import pandas as pd

    path = tmp_path / "sft.parquet"
    pd.DataFrame([{"messages": [{"role": "user", "content": "hi"}]}]).to_parquet(path)
    assert main(["rewards", "check", str(path)]) == 2
    assert "missing column(s) data_source, reward_model, extra_info; it has messages" in capsys.readouterr().err


def test_dicom_command_writes_png_and_sidecar(tmp_path: Path, capsys) -> None:
    from PIL import Image
    from pydicom.data import get_testdata_file

    ct = str(get_testdata_file("CT_small.dcm", download=False))
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM")
    assert main(["dicom", ct, str(broken), "--output", str(tmp_path / "out"), "--preset=-600,1500"]) == 0
    captured = capsys.readouterr()
    assert "window explicit (-600/1500)" in captured.out
    assert "broken.dcm: " in captured.err and "no Rows (0028,0010)" in captured.err
    assert Image.open(tmp_path / "out" / "CT_small.png").size == (128, 128)
    sidecar = json.loads((tmp_path / "out" / "CT_small.json").read_text())
    assert sidecar["modality"] == "CT" and sidecar["window"] == "explicit (-600/1500)"
    assert main(["dicom", str(broken), "--output", str(tmp_path / "none")]) == 1  # nothing converted


def test_dicom_files_of_the_same_name_keep_their_directory(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    ct = Path(get_testdata_file("CT_small.dcm", download=False)).read_bytes()
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.dcm").write_bytes(ct)
    (tmp_path / "a" / "y.dcm").write_bytes(ct)
    inputs = [str(tmp_path / f) for f in ("a/x.dcm", "b/x.dcm", "a/y.dcm")]
    assert main(["dicom", *inputs, "--output", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["a_x.png", "b_x.png", "y.png"]
    assert json.loads((tmp_path / "out" / "b_x.json").read_text())["source"] == inputs[1]
    assert main(["dicom", inputs[0], inputs[0], "--output", str(tmp_path / "twice")]) == 2


def test_every_option_has_help_and_shows_its_default() -> None:
    from medverl.cli import build_parser

    def parsers(parser):
        yield parser
        for action in parser._actions:
            for child in getattr(action, "choices", None) or {}:
                if isinstance(action.choices, dict):
                    yield from parsers(action.choices[child])

    checked = 0
    for parser in parsers(build_parser()):
        if parser.prog == "medverl pipeline":  # declared in medverl/pipeline.py
            continue
        text = parser.format_help()
        for action in parser._actions:
            if action.help == "==SUPPRESS==" or isinstance(action, __import__("argparse")._SubParsersAction):
                continue
            assert action.help, f"{parser.prog} {action.dest} has no help"
            if action.default not in (None, False, [], "==SUPPRESS==") and action.option_strings:
                assert f"(default: {action.default})" in " ".join(text.split()), (parser.prog, action.dest)
            checked += 1
    assert checked > 80


def test_a_float_reward_reads_its_answer_as_the_prediction(tmp_path: Path, capsys) -> None:
    plugin = tmp_path / "codes.py"
    plugin.write_text("from medverl.rewards import register\n\n@register('code')\n"
                      "def code(answer, golds):\n    return 1.0 if answer in golds else 0.5 if answer[:3] in golds[0] else 0.0\n")
    rows = [{"solution_str": "<answer>C34.1</answer>", "ground_truth": "C34.1", "query_type": "code"},
            {"solution_str": "<answer>C34.9</answer>", "ground_truth": "C34.1", "query_type": "code"}]
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["score", "--input", str(preds), "--output", str(tmp_path / "s"), "--plugins", str(plugin)]) == 0
    # right answers are no parse failures: a float reward's prediction is its answer
    assert _table_row(capsys.readouterr().out, "code") == ["code", "2", "0.775", "0.750", "100.0%", "0"]
    samples = [json.loads(line) for line in (tmp_path / "s" / "samples.jsonl").read_text().splitlines()]
    assert [s["pred"] for s in samples] == ["C34.1", "C34.9"]


def test_an_unexpected_error_keeps_its_traceback(monkeypatch) -> None:
    from medverl.eval import score_file

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(score_file, "score_file", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["score", "--input", str(EXAMPLE)])


@pytest.mark.parametrize("command", [["qc", "score", "rl", "x.jsonl"],
                                     ["eval", "score", "--data", "d", "--run", "m=p"]])
@pytest.mark.parametrize(("option", "value"), [("--judge-timeout", "nan"), ("--judge-retries", "-1"),
                                               ("--judge-concurrency", "0"), ("--judge-timeout", "soon")])
def test_both_judges_refuse_the_same_values(command: list[str], option: str, value: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--output", "o", option, value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"argument {option}: " in err and "must be" in err


def test_qc_score_and_eval_score_have_one_judge_option_group() -> None:
    from medverl.cli import build_parser

    parser = build_parser()
    qc = vars(parser.parse_args(["qc", "score", "rl", "x.jsonl", "--output", "o"]))
    evaluation = vars(parser.parse_args(["eval", "score", "--data", "d", "--run", "m=p", "--output", "o"]))
    judge = {key: value for key, value in qc.items() if key.startswith("judge_")}
    assert set(judge) == {"judge_base_url", "judge_model", "judge_concurrency", "judge_timeout_s", "judge_retries"}
    assert {key: evaluation[key] for key in judge} == judge  # same names, same defaults


def test_the_reward_options_are_the_fields_of_reward_options() -> None:
    from dataclasses import fields

    from medverl.cli import build_parser
    from medverl.rewards import RewardOptions
    from medverl.rewards.options import reward_options

    parser = build_parser()
    assert reward_options(parser.parse_args(["score", "--input", "x"])) == RewardOptions()  # the dataclass's defaults
    args = parser.parse_args(["score", "--input", "x", "--think-prefilled", "--format-weight", "0.3",
                              "--plugins", "a.py", "--plugins", "b.py", "--max-answer-chars", "9"])
    assert reward_options(args) == RewardOptions(0.3, True, False, 9, None, ("a.py", "b.py"))
    assert all(field.metadata["help"] for field in fields(RewardOptions))  # each field says what its option does
