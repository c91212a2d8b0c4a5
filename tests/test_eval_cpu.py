"""Evaluation on CPU: ``eval run --backend hf`` with a tiny random Qwen2.5-VL on the bundled benchmark samples, then
``eval score``; batched greedy against one prompt at a time; bad models and undecodable images; several checkpoints
in one resumable table; the pipeline's eval stage."""

import json
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from medverl.cli import main
from medverl.data.job import MANIFEST, file_sha256
from medverl.eval import run, stage
from medverl.eval.samples import write_samples
from medverl.models import get_family
from medverl.pipeline import Pipeline, PipelineError, run_pipeline

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """VQA-RAD (one image per question) and MMMU (one to four images per question, an open question), prepared."""
    root = tmp_path_factory.mktemp("bench")
    sources = write_samples(root / "sources")
    out = {}
    for name in ("vqa_rad", "mmmu_hm"):
        out[name] = root / name
        assert main(["eval", "prepare", name, "--source", str(sources[name]), "--output", str(out[name])]) == 0
    return out


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_eval_run_on_cpu_writes_what_eval_score_reads(tiny_model: Path, benchmarks: dict[str, Path], tmp_path: Path,
                                                      capsys) -> None:
    preds = tmp_path / "preds.jsonl"
    data = [str(benchmarks["vqa_rad"]), str(benchmarks["mmmu_hm"])]
    assert main(["eval", "run", "--model", str(tiny_model), "--data", *data, "--output", str(preds), "--backend", "hf",
                 "--max-tokens", "6", "--batch-size", "3"]) == 0
    assert "7 predictions (hf)" in capsys.readouterr().out
    lines = _lines(preds)
    assert [(p["data_source"], p["index"]) for p in lines] == [("vqa_rad", i) for i in range(3)] + [
        ("mmmu_hm", i) for i in range(4)]
    assert all(isinstance(p["response"], str) for p in lines) and not run.rejects_path(preds).exists()
    report = tmp_path / "report"
    assert main(["eval", "score", "--data", *data, "--run", f"tiny={preds}", "--output", str(report)]) == 0
    metrics = json.loads((report / "metrics.json").read_text())["tiny"]
    assert {k: (m["n"], m["missing"]) for k, m in metrics.items()} == {"vqa_rad": (3, 0), "mmmu_hm": (4, 0)}


def test_prompts_follow_verls_rendering_at_the_rows_resolution(tiny_model: Path, benchmarks: dict[str, Path]) -> None:
    files = run.ModelFiles(str(tiny_model))
    rows = run.read_rows([benchmarks["mmmu_hm"]])
    four = next(r for r in rows if len(r["images"]) == 4)
    prompt = files.prompt(four)
    assert prompt.text.count("<|vision_start|><|image_pad|><|vision_end|>") == 4 == len(prompt.images)
    assert prompt.text.startswith("<|im_start|>user\n") and prompt.text.endswith("<|im_start|>assistant\n")
    # a row's own max_pixels (written by eval prepare --max-pixels, as in training) sets the image size
    row = dict(rows[0], images=[dict(rows[0]["images"][0], max_pixels=28 * 28 * 4, min_pixels=28 * 28)])
    (image,) = files.prompt(row).images
    assert image.size[0] * image.size[1] <= 28 * 28 * 4 and image.size[0] % 28 == 0 == image.size[1] % 28


def test_batched_greedy_is_unbatched_greedy_and_never_a_vision_token(tiny_model: Path,
                                                                      benchmarks: dict[str, Path]) -> None:
    files = run.ModelFiles(str(tiny_model))
    generator = run.HFGenerator(str(tiny_model), files, max_tokens=8, batch_size=4, device="cpu")
    rows = run.read_rows([benchmarks["vqa_rad"], benchmarks["mmmu_hm"]])  # prompts of different lengths, 1-4 images
    prompts = [files.prompt(r) for r in rows]
    batched = generator.token_ids(prompts)
    assert batched == [ids for p in prompts for ids in generator.token_ids([p])]
    assert generator([prompts[0]]) == [files.tokenizer.decode(batched[0], skip_special_tokens=True)]
    # a model that prefers vision tokens above all: its family's are suppressed, as in medverl.cpu.rollout
    assert files.family == get_family("qwen2.5-vl")
    vision = [files.tokenizer.convert_tokens_to_ids(t) for t in files.family.never_sample]
    assert sorted(generator.suppressed) == sorted(vision)

    def prefer_vision(module, inputs, logits):
        logits[..., vision] += 1e4
        return logits

    hook = generator.model.lm_head.register_forward_hook(prefer_vision)
    try:
        assert not set(vision) & {t for ids in generator.token_ids(prompts[:3]) for t in ids}
        generator.suppressed = None
        assert set(generator.token_ids(prompts[:1])[0]) <= set(vision)  # the hook works: without suppression
    finally:
        hook.remove()


def _edit_config(model: Path, change) -> None:
    config = json.loads((model / "config.json").read_text())
    change(config)
    (model / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("make", "error"),
    [
        # a processor directory: config.json, no weights
        (lambda tiny_model, d: shutil.copytree(tiny_model, d, ignore=shutil.ignore_patterns("*.safetensors")),
         "no weights (*.safetensors or pytorch_model*.bin)"),
        # no directory at all
        (lambda tiny_model, d: d, "no such directory"),
        # a verl checkpoint folder, not an HF model
        (lambda tiny_model, d: (d.mkdir(), (d / "model_world_size_1_rank_0.pt").write_bytes(b""))[0], "no config.json"),
        # the model's image token is another token of the tokenizer
        (lambda tiny_model, d: _edit_config(Path(shutil.copytree(tiny_model, d)), lambda c: c.update(image_token_id=7)),
         "expects image_token_id 7"),
        # a tokenizer larger than the model's vocabulary
        (lambda tiny_model, d: _edit_config(Path(shutil.copytree(tiny_model, d)),
                                      lambda c: c["text_config"].update(vocab_size=500)),
         "more than the model's vocabulary of 500"),
    ],
    ids=["no-weights", "missing", "verl-checkpoint", "image-token", "vocab"],
)
def test_a_model_that_cannot_generate_is_a_usage_error(tiny_model: Path, benchmarks: dict[str, Path], tmp_path: Path,
                                                       capsys, make, error: str) -> None:
    model = tmp_path / "model"
    make(tiny_model, model)
    preds = tmp_path / "p.jsonl"
    assert main(["eval", "run", "--model", str(model), "--data", str(benchmarks["vqa_rad"]), "--output", str(preds),
                 "--backend", "hf"]) == 2
    err = capsys.readouterr().err
    assert str(model) in err and error in err, err
    assert not preds.exists()


def _with_bad_image(prepared: Path, out: Path, index: int) -> Path:
    """A copy of a prepared directory whose row `index` has bytes that are not an image."""
    shutil.copytree(prepared, out)
    shard = out / "part-00000.parquet"
    table = pq.read_table(shard)
    rows = table.to_pylist()
    row = next(r for r in rows if r["extra_info"]["index"] == index)
    row["images"][0]["bytes"] = b"\x89PNG\r\n\x1a\n but truncated"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard)
    # as if the job had written it so: the manifest records the shard as it now is
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["shards"][0].update(bytes=shard.stat().st_size, sha256=file_sha256(shard))
    (out / MANIFEST).write_text(json.dumps(manifest))
    return out


def test_an_image_that_does_not_decode_is_rejected_and_scored_missing(tiny_model: Path, benchmarks: dict[str, Path],
                                                                      tmp_path: Path, capsys) -> None:
    data = _with_bad_image(benchmarks["vqa_rad"], tmp_path / "vqa_rad", 1)
    preds = tmp_path / "preds.jsonl"
    assert main(["eval", "run", "--model", str(tiny_model), "--data", str(data), "--output", str(preds), "--backend",
                 "hf", "--max-tokens", "4"]) == 1
    err = capsys.readouterr().err
    assert "1 row(s) not generated (bad_image 1)" in err and "preds.rejects.jsonl" in err
    assert [p["index"] for p in _lines(preds)] == [0, 2]
    (reject,) = _lines(tmp_path / "preds.rejects.jsonl")
    assert (reject["data_source"], reject["index"], reject["code"]) == ("vqa_rad", 1, "bad_image")
    assert "image 1 does not decode" in reject["reason"]
    report = tmp_path / "report"
    assert main(["eval", "score", "--data", str(data), "--run", f"m={preds}", "--output", str(report)]) == 0
    assert json.loads((report / "metrics.json").read_text())["m"]["vqa_rad"]["missing"] == 1


class Echo:
    """A stand-in generator: the same answer to every prompt, counting its calls."""

    batch_size = 4
    calls = 0

    def __init__(self, answer: str) -> None:
        self.answer = answer

    def __call__(self, prompts):
        Echo.calls += len(prompts)
        return [self.answer] * len(prompts)

    def close(self) -> None:
        pass


def test_several_checkpoints_make_one_resumable_table(tiny_model: Path, benchmarks: dict[str, Path], tmp_path: Path,
                                                      monkeypatch) -> None:
    answers = {str(tiny_model): "<think>x</think><answer>yes</answer>", str(tmp_path / "other"): "<answer>A</answer>"}
    shutil.copytree(tiny_model, tmp_path / "other")
    monkeypatch.setattr(run, "load_generator", lambda model, *a, **k: Echo(answers[model]))
    monkeypatch.setattr(Echo, "calls", 0)
    checkpoints = [("base", str(tiny_model)), ("other", str(tmp_path / "other"))]
    bench = [("VQA-RAD", str(benchmarks["vqa_rad"])), ("MMMU", str(benchmarks["mmmu_hm"]))]
    out = tmp_path / "evals"
    table = stage.evaluate_checkpoints(checkpoints, bench, out, backend="hf", max_tokens=16)
    assert Echo.calls == 2 * (3 + 4)
    # "yes" is right for one of VQA-RAD's three questions; "A" for one of MMMU's four
    assert table["accuracy"] == {"base": {"VQA-RAD": pytest.approx(1 / 3), "MMMU": 0.0},
                                 "other": {"VQA-RAD": 0.0, "MMMU": 0.25}}
    md = (out / "eval_table.md").read_text()
    assert "| checkpoint | VQA-RAD | MMMU | Avg. |" in md
    assert "| base | 33.3 | 0.0 | 16.7 |" in md and "| other | 0.0 | 25.0 | 12.5 |" in md
    assert "Questions: VQA-RAD 3, MMMU 4." in md
    assert Image.open(out / "eval_table.png").format == "PNG"
    saved = json.loads((out / "eval_table.json").read_text())
    assert saved["accuracy"]["other"]["MMMU"] == 0.25 and saved["cells"]["base"]["VQA-RAD"]["n"] == 3
    # the cell's numbers are eval score's own report of its predictions
    report = json.loads((out / "base" / "VQA-RAD" / "score" / "metrics.json").read_text())["base"]["vqa_rad"]
    assert report["acc"] == pytest.approx(1 / 3)
    # resumable: nothing is generated again; a new token budget makes every cell again
    assert stage.evaluate_checkpoints(checkpoints, bench, out, backend="hf", max_tokens=16) == table
    assert Echo.calls == 14
    (out / "other" / "MMMU" / "cell.json").unlink()  # interrupted before this cell was finished
    stage.evaluate_checkpoints(checkpoints, bench, out, backend="hf", max_tokens=16)
    assert Echo.calls == 14 + 4
    stage.evaluate_checkpoints(checkpoints, bench, out, backend="hf", max_tokens=8)
    assert Echo.calls == 18 + 14


def test_checkpoints_are_checked_before_anything_is_generated(tiny_model: Path, tiny_processor: Path,
                                                              benchmarks: dict[str, Path],
                                                              tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(run, "load_generator", lambda *a, **k: pytest.fail("generated before the checks"))
    shutil.copytree(tiny_processor, tmp_path / "no_weights")
    assert main(["eval", "checkpoints", "--model", f"base={tiny_model}", "--model", f"bad={tmp_path / 'no_weights'}",
                 "--data", str(benchmarks["vqa_rad"]), "--output", str(tmp_path / "out"), "--backend", "hf"]) == 2
    assert f"{tmp_path / 'no_weights'}: no weights" in capsys.readouterr().err
    assert main(["eval", "checkpoints", "--model", f"base={tiny_model}", "--data", str(tmp_path), "--output",
                 str(tmp_path / "out"), "--backend", "hf"]) == 2
    assert "has no manifest.json" in capsys.readouterr().err


FAKE_SFT = r'''
import os, shutil, sys
from pathlib import Path
from medverl.stages import KINDS, TRACKER
# Hydra reads a quoted value as the text between the quotes
args = {k: v.strip("'") for k, v in (a.split("=", 1) for a in sys.argv[1:] if "=" in a and not a.startswith("--"))}
checkpoints = Path(args["trainer.default_local_dir"])
shutil.copytree(os.environ["TRAINED_MODEL"], KINDS["sft"].checkpoint_model(checkpoints, 1))
(checkpoints / TRACKER).write_text("1")
'''


@pytest.fixture
def workdir(tmp_path: Path, tiny_models, benchmarks: dict[str, Path], monkeypatch) -> Path:
    """SFT data prepared, a stand-in trainer whose saved model is another tiny model, and a pipeline file maker."""
    (tmp_path / "examples").symlink_to(REPO / "examples")
    monkeypatch.chdir(tmp_path)
    assert main(["prep", "sft", "examples/data/sft.jsonl", "--output", "data/sft", "--image-root",
                 "examples/data/images"]) == 0
    (tmp_path / "fake_sft.py").write_text(FAKE_SFT)
    monkeypatch.setenv("TRAINED_MODEL", str(tiny_models.model(seed=1)))
    return tmp_path


def _pipeline(workdir: Path, tiny_model: Path, *stages: dict) -> Path:
    """A pipeline file: the tiny model, on CPU, an SFT stage (the stand-in trainer), then `stages`."""
    config = {
        "model": str(tiny_model), "output": "runs/p", "device": "cpu", "gpus_per_node": 1,
        "launchers": {"sft": [sys.executable, str(workdir / "fake_sft.py")]},
        "stages": [{"name": "sft1", "recipe": "sft_stage1", "train": ["data/sft"]}, *stages],
    }
    path = workdir / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_eval_stage_scores_the_start_and_every_earlier_stage(workdir: Path, tiny_model: Path,
                                                                benchmarks: dict[str, Path], capsys) -> None:
    eval_stage = {"name": "eval", "kind": "eval", "benchmarks": {"VQA-RAD": str(benchmarks["vqa_rad"])},
                  "max_tokens": 4}
    config = _pipeline(workdir, tiny_model, eval_stage)
    assert main(["pipeline", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    output = workdir / "runs" / "p"
    assert f"[eval] evaluates base ({tiny_model}), sft1 ({output / 'sft1' / 'model'}) on VQA-RAD" in out
    assert f"eval checkpoints --model=base={tiny_model} --model=sft1={output / 'sft1' / 'model'}" in out
    assert "--backend hf --max-tokens 4 --device cpu" in out and not output.exists()
    assert main(["pipeline", str(config)]) == 0
    md = (output / "eval_table.md").read_text()
    assert "| checkpoint | VQA-RAD |" in md and "| base |" in md and "| sft1 |" in md
    assert (output / "eval_table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = json.loads((output / "eval_table.json").read_text())
    assert [c["label"] for c in table["checkpoints"]] == ["base", "sft1"] and table["backend"] == "hf"
    assert "## Evaluation: eval" in (output / "summary.md").read_text()
    assert "VQA-RAD" in (output / "logs" / "eval.log").read_text()
    state = json.loads((output / "pipeline_state.json").read_text())
    assert list(state["stages"]) == ["sft1", "eval"] and state["stages"]["eval"]["table"].endswith("eval_table.md")
    capsys.readouterr()
    assert main(["pipeline", str(config)]) == 0
    assert "[eval] finished before, table" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("eval_stage", "error"),
    [
        ({"benchmarks": ["data/none"]}, r"stage eval \(eval\): benchmark none: data/none: no such directory"),
        ({"benchmarks": ["data/sft"]}, "benchmark sft: data/sft holds sft data"),
        ({"checkpoints": ["base", "runs/elsewhere/model"]},
         "checkpoint runs/elsewhere/model: no earlier stage makes it and runs/elsewhere/model: no such directory"),
        ({"checkpoints": {"later": "sft2"}}, "checkpoint later is sft2, a later stage"),
        ({"checkpoints": ["eval"]}, "checkpoint eval is eval, an eval stage"),
        ({"max_tokens": 0}, "'max_tokens' must be a positive integer"),
        ({"recipe": "grpo"}, "unknown key 'recipe'; known: name, kind, benchmarks"),
        ({"kind": "evaluate"}, "'kind' must be one of cpt, sft, grpo, eval, got 'evaluate'"),
        ({"benchmarks": 5}, "'benchmarks' must be a list or a mapping"),
    ],
)
def test_a_bad_eval_stage_is_named_before_anything_runs(workdir: Path, tiny_model: Path, benchmarks: dict[str, Path],
                                                        eval_stage: dict, error: str) -> None:
    stage_spec = {"name": "eval", "kind": "eval", "benchmarks": [str(benchmarks["vqa_rad"])], **eval_stage}
    config = _pipeline(workdir, tiny_model, stage_spec, {"name": "sft2", "recipe": "sft_stage1", "train": ["data/sft"]})
    with pytest.raises(PipelineError, match=error):
        run_pipeline(Pipeline.load(config), dry_run=True)
    assert not (workdir / "runs").exists()


def test_a_starting_model_that_is_not_there_is_named(workdir: Path, tiny_model: Path,
                                                      benchmarks: dict[str, Path]) -> None:
    eval_stage = {"name": "eval", "kind": "eval", "benchmarks": [str(benchmarks["vqa_rad"])]}
    config = _pipeline(workdir, tiny_model, eval_stage)
    config.write_text(config.read_text().replace(str(tiny_model), str(workdir / "nowhere")))
    with pytest.raises(PipelineError, match=f"checkpoint base: the starting model {workdir / 'nowhere'}: no such "
                                            "directory"):
        run_pipeline(Pipeline.load(config), dry_run=True)


def test_a_finished_stages_model_that_is_gone_is_named(workdir: Path, tiny_model: Path,
                                                       benchmarks: dict[str, Path]) -> None:
    assert run_pipeline(Pipeline.load(_pipeline(workdir, tiny_model))) == 0  # the training stage alone
    (workdir / "runs" / "p" / "sft1" / "model").unlink()
    eval_stage = {"name": "eval", "kind": "eval", "benchmarks": [str(benchmarks["vqa_rad"])]}
    with pytest.raises(PipelineError, match="needs the model of stage sft1, finished before, but .* is gone: rerun "
                                            "it with --from sft1"):
        run_pipeline(Pipeline.load(_pipeline(workdir, tiny_model, eval_stage)), dry_run=True)
