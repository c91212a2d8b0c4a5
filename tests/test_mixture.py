"""Weighted data mixtures: the epoch index, the pipeline's mixture keys and checks, the dataset class loaded by verl's
own dataset factories, and two data-parallel ranks of verl's SFT trainer drawing from one mixture."""

import json
import math
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from medverl.cli import main
from medverl.pipeline import Pipeline
from medverl.training.mixing import ROW_BITS, build_index, counts, draw_lines, plan, unpack

REPO = Path(__file__).resolve().parent.parent
ROWS = (20_000, 30_000, 50_000)
WEIGHTS = (0.5, 0.3, 0.2)


def _realized(index: np.ndarray, sources: int) -> np.ndarray:
    return np.bincount(index >> ROW_BITS, minlength=sources) / len(index)


@pytest.mark.parametrize("strategy", ["proportions", "temperature"])
@pytest.mark.parametrize("length", [{"samples": 12_345}, {"until": "first"}, {"until": "last"}, {}])
def test_the_first_10000_samples_hold_the_requested_shares(strategy: str, length: dict) -> None:
    weights = WEIGHTS if strategy == "proportions" else (None,) * 3
    mixture = plan("abc", ROWS, weights, strategy=strategy, temperature=3.0 if strategy == "temperature" else None,
                   **length)
    assert sum(mixture.samples) == mixture.length >= 10_000
    realized = _realized(build_index(ROWS, mixture.samples, seed=1)[:10_000], 3)
    assert np.abs(realized - np.array(mixture.shares)).max() < 0.02, (realized, mixture.shares)
    if strategy == "temperature":  # share ∝ rows^(1/T): flatter than by size
        expected = np.array(ROWS) ** (1 / 3)
        assert np.allclose(mixture.shares, expected / expected.sum())


@pytest.mark.parametrize(
    ("length", "samples"),
    [
        ({}, (20_000, 30_000, 50_000)),  # the total rows, at the weights' shares
        ({"until": "first"}, (20_000, 12_000, 8_000)),  # source a runs out first: no source upsampled
        ({"until": "last"}, (125_000, 75_000, 50_000)),  # source c runs out last: every row seen
        ({"samples": 7}, (4, 2, 1)),  # 3.5, 2.1, 1.4: the largest remainder gets the last sample
    ],
)
def test_epoch_lengths_and_integer_counts(length: dict, samples: tuple) -> None:
    weights = (0.5, 0.3, 0.2) if length else (None,) * 3
    assert plan("abc", ROWS, weights, **length).samples == samples


@pytest.mark.parametrize("seed", range(5))
def test_largest_remainder_sums_exactly(seed: int) -> None:
    rng = np.random.default_rng(seed)
    share = rng.dirichlet(np.ones(7))
    for length in (1, 13, 999, 10_007):
        got = counts(share, length)
        assert got.sum() == length and np.all(np.abs(got - share * length) < 1)


def test_the_index_is_deterministic() -> None:
    samples = plan("abc", ROWS, WEIGHTS).samples
    first, again = build_index(ROWS, samples, 7), build_index(ROWS, samples, 7)
    assert np.array_equal(first, again) and not np.array_equal(first, build_index(ROWS, samples, 8))
    # shuffled across sources: a sequential sampler sees them interleaved too
    assert len(set((first[:100] >> ROW_BITS).tolist())) == 3


def test_upsampling_cycles_through_permutations_and_downsampling_takes_a_subset() -> None:
    index = build_index((3, 100), (10, 10), seed=0)
    pairs = [unpack(v) for v in index]
    small = np.bincount([row for source, row in pairs if source == 0], minlength=3)
    assert sorted(small.tolist()) == [3, 3, 4]  # three whole passes, then one more row
    large = [row for source, row in pairs if source == 1]
    assert len(set(large)) == 10 and all(0 <= row < 100 for row in large)


def test_ten_million_rows_index_into_80_mb() -> None:
    rows = (1_000_000,) * 10
    index = build_index(rows, rows, seed=0)
    assert index.dtype == np.int64 and index.nbytes == 80_000_000
    assert np.array_equal(np.bincount(index >> ROW_BITS), rows)


class _Logged:
    """A map-style dataset that logs each draw: position i from source i % 2."""

    def __init__(self, directory: Path) -> None:
        from medverl.training.mixing import DrawLog

        self.log = DrawLog(directory, ("a", "b"), every=3)

    def __len__(self) -> int:
        return 40

    def __getitem__(self, position: int) -> int:
        self.log.record(position % 2, position)
        return position


@pytest.mark.parametrize("workers", [0, 2])
def test_draw_logs_hold_every_draw_of_every_process(tmp_path: Path, workers: int) -> None:
    from torch.utils.data import DataLoader

    from medverl.training.mixing import draw_lines, drawn_per_step

    loader = DataLoader(_Logged(tmp_path), batch_size=4, num_workers=workers, shuffle=True)
    assert sorted(int(i) for batch in loader for i in batch) == list(range(40))
    if not workers:
        loader.dataset.log.flush()  # a worker's log is written when it exits; this process's at its exit
    files = {name for name, _ in draw_lines(tmp_path)}
    assert len(files) == max(workers, 1)
    positions = sorted(p for _, line in draw_lines(tmp_path) for ps in line["positions"].values() for p in ps)
    assert positions == list(range(40))
    at, total = drawn_per_step(tmp_path, [1, 5, 10], per_step=4)
    assert total == {"a": 20, "b": 20} and sum(at[10].values()) == 40 and sum(at[1].values()) <= 4


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Example records prepared as two CPT sources, SFT, RL and an empty CPT source."""
    root = tmp_path_factory.mktemp("mixture_data")
    (root / "empty.jsonl").write_text("")
    ex = REPO / "examples" / "data"
    for args in (
        ["caption", ex / "captions.jsonl", "cpt_captions", "200704"],
        ["caption", ex / "stain_captions.jsonl", "cpt_stain", "200704"],
        ["caption", root / "empty.jsonl", "cpt_empty", "200704"],
        ["sft", ex / "sft.jsonl", "sft", "200704"],
        ["rl", ex / "rl.jsonl", "rl", "802816"],
        ["rl", ex / "stain_rl.jsonl", "rl_stain", "802816"],
        ["rl", ex / "rl_val.jsonl", "rl_val", "802816"],
    ):
        kind, records, name, pixels = args
        code = main(["prep", kind, str(records), "--output", str(root / name), "--max-pixels", pixels,
                     "--image-root", str(ex / "images")])
        assert code == (1 if name == "cpt_empty" else 0)  # a complete job that wrote nothing exits 1
    return root


def _pipeline(data: Path, tmp_path: Path, stages: list[dict], **changes) -> Path:
    config = {"model": "Qwen/Qwen2.5-VL-3B-Instruct", "output": str(tmp_path / "out"), "gpus_per_node": 1,
              "stages": stages, **changes}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _cpt(data: Path, *train, mixture: dict | None = None, **extra) -> dict:
    items = [{**item, "path": str(data / item["path"])} if isinstance(item, dict) else str(data / item)
             for item in train]
    return {"name": "cpt", "recipe": "cpt", "train": items, **({"mixture": mixture} if mixture is not None else {}),
            **extra}


@pytest.mark.parametrize(
    ("train", "mixture", "error"),
    [
        ([{"path": "cpt_captions", "weight": 0}, "cpt_stain"], None,
         "stage cpt: train item 0: source cpt_captions .*: weight 0 leaves the source out of the mixture"),
        ([{"path": "cpt_captions", "weight": -1}, "cpt_stain"], None,
         "source cpt_captions .*weight -1 is not a positive finite number"),
        ([{"path": "cpt_captions", "weight": float("nan")}, "cpt_stain"], None, "weight nan is not a positive"),
        ([{"path": "cpt_captions", "weight": float("inf")}, "cpt_stain"], None, "weight inf is not a positive"),
        ([{"path": "cpt_captions", "weight": "0.5"}, "cpt_stain"], None,
         "weight '0.5' is not a number: write a number without quotes"),
        ([{"path": "cpt_captions", "weight": 0}, {"path": "cpt_stain", "weight": 0}], None, "weight 0 leaves"),
        ([{"path": "cpt_captions", "weight": 1}, {"path": "cpt_empty", "weight": 1}], None,
         "stage cpt: source cpt_empty: .*cpt_empty has no rows: remove it from the stage's train list"),
        ([{"path": "cpt_captions", "weight": 1}, {"path": "sft", "weight": 1}], None,
         "stage cpt \\(cpt\\): source sft: .*sft holds sft data"),
        ([{"path": "cpt_captions", "weight": 1}, {"path": "none", "name": "extra", "weight": 1}], None,
         "stage cpt \\(cpt\\): source extra: .*none: no such directory"),
        ([{"path": "cpt_captions", "wieght": 1}], None, "train item 0: unknown key 'wieght'; did you mean 'weight'"),
        (["cpt_captions", "cpt_stain"], {"strategie": "temperature"},
         "stage cpt: unknown key 'strategie'; did you mean 'strategy'\\?"),
        (["cpt_captions", "cpt_stain"], {"samples": 10, "until": "first"},
         "stage cpt: mixture: samples and until both set the epoch's length: keep one of them"),
        (["cpt_captions", "cpt_stain"], {"strategy": "temperature", "temperature": 0},
         "stage cpt: mixture: temperature 0.0 must be a finite number > 0"),
        (["cpt_captions", "cpt_stain"], {"strategy": "temperature", "temperature": -2},
         "temperature -2.0 must be a finite number > 0"),
        ([{"path": "cpt_captions", "weight": 1}, "cpt_stain"], {"strategy": "temperature", "temperature": 2},
         "strategy temperature sets the shares from the sources' sizes: drop the weights"),
        ([{"path": "cpt_captions", "weight": 1}, {"path": "cpt_captions", "weight": 2}], None,
         "two train sources are named cpt_captions: tell them apart"),
    ],
)
def test_bad_mixtures_exit_2_before_anything_runs(data: Path, tmp_path: Path, capsys, train: list, mixture,
                                                   error: str) -> None:
    config = _pipeline(data, tmp_path, [_cpt(data, *train, mixture=mixture)])
    assert main(["pipeline", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert re.search(error, err), err
    assert not (tmp_path / "out").exists()


def test_a_stage_without_weights_or_mixture_runs_as_before(data: Path, tmp_path: Path) -> None:
    pipeline = Pipeline.load(_pipeline(data, tmp_path, [_cpt(data, "cpt_captions", "cpt_stain")]))
    assert pipeline.stages[0].mixture is None and pipeline.mixture_plan(pipeline.stages[0]) is None
    assert not any("mixture" in o.split("=")[0] or "custom_cls" in o.split("=")[0] for o in pipeline.command(0))


def test_dry_run_shows_the_mixture_and_json_the_plan(data: Path, tmp_path: Path, capsys) -> None:
    stage = _cpt(data, {"path": "cpt_captions", "weight": 1, "name": "general"}, {"path": "cpt_stain", "weight": 3},
                 mixture={"samples": 40, "seed": 3})
    config = _pipeline(data, tmp_path, [stage])
    assert main(["pipeline", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "[cpt] mixes 2 sources (proportions), 40 samples per epoch:" in out
    assert "| general | 3 | 1 | 25.0% | 10 |" in out and "| cpt_stain | 72 | 3 | 75.0% | 30 |" in out
    assert main(["pipeline", str(config), "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    cpt = planned["stages"][0]
    assert cpt["mixture"]["samples_per_epoch"] == 40 and cpt["mixture"]["seed"] == 3
    assert [(s["name"], s["rows"], s["samples"]) for s in cpt["mixture"]["sources"]] == [("general", 3, 10),
                                                                                         ("cpt_stain", 72, 30)]
    command = cpt["command"]
    assert "data.custom_cls.path=pkg://medverl.training.mixture" in command
    assert "+data.mixture.dataset.path=pkg://medverl.training.cpt_dataset" in command
    assert f"+data.mixture.draws='{tmp_path / 'out' / 'logs' / 'cpt.draws'}'" in command
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tokenizer_and_processor(tiny_processor: Path) -> tuple:
    """The tiny tokenizer and processor as verl's trainers load them (the processor binds the model config)."""
    from verl.utils import hf_processor, hf_tokenizer

    return hf_tokenizer(str(tiny_processor)), hf_processor(str(tiny_processor))


def test_verls_sft_factory_loads_the_mixture_and_plain_data_for_other_files(data: Path, tmp_path: Path,
                                                                              tokenizer_and_processor) -> None:
    from verl.trainer.sft_trainer import create_sft_dataset

    from medverl.training.cpt_dataset import CPTDataset
    from medverl.training.mixture import MixtureDataset

    stage = _cpt(data, {"path": "cpt_captions", "weight": 1}, {"path": "cpt_stain", "weight": 1},
                 mixture={"samples": 20})
    pipeline = Pipeline.load(_pipeline(data, tmp_path, [stage]))
    config = pipeline.stage_config(pipeline.stages[0]).data
    tokenizer, processor = tokenizer_and_processor
    mixture = create_sft_dataset(config.train_files, config, tokenizer, processor)
    assert isinstance(mixture, MixtureDataset) and len(mixture) == 20
    assert [len(d) for d in mixture.datasets] == [3, 72] and mixture.plan.samples == (10, 10)
    for position in range(len(mixture)):
        source, row = unpack(mixture.index[position])
        assert mixture[position]["input_ids"].equal(mixture.datasets[source][row]["input_ids"])
    val = [str(p) for p in sorted((data / "cpt_captions").glob("*.parquet"))]
    plain = create_sft_dataset(val, config, tokenizer, processor)
    assert type(plain) is CPTDataset and len(plain) == 3


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"weight": 0}, "data.mixture source a: weight 0 leaves the source out"),
        ({"weight": "x"}, "data.mixture source a: weight 'x' is not a number"),
        ({"name": "b"}, "names must be distinct"),
    ],
)
def test_the_class_refuses_bad_raw_verl_keys(tmp_path: Path, change: dict, error: str) -> None:
    from medverl.training.mixture import MixtureDataset

    files = [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
    sources = [{"name": "a", "files": files[:1], **change}, {"name": "b", "files": files[1:]}]
    with pytest.raises(ValueError, match=error):
        MixtureDataset(parquet_files=files, config={"mixture": {"sources": sources}})


def test_verls_rl_factory_loads_the_mixture_over_rlhf_datasets(data: Path, tmp_path: Path,
                                                                tokenizer_and_processor) -> None:
    from verl.trainer.ppo.utils import create_rl_dataset
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from medverl.training.mixture import MixtureDataset

    stage = {"name": "grpo", "recipe": "grpo", "train": [{"path": str(data / "rl_stain"), "weight": 1},
                                                          {"path": str(data / "rl"), "weight": 1}],
             "val": [str(data / "rl_val")], "overrides": ["data.filter_overlong_prompts_workers=null"]}  # in-process
    pipeline = Pipeline.load(_pipeline(data, tmp_path, [stage]))
    config = pipeline.stage_config(pipeline.stages[0]).data
    tokenizer, processor = tokenizer_and_processor
    mixture = create_rl_dataset(config.train_files, config, tokenizer, processor, max_samples=50)
    assert isinstance(mixture, MixtureDataset) and len(mixture) == 50  # max_samples caps the epoch
    assert all(isinstance(d, RLHFDataset) for d in mixture.datasets) and mixture.plan.samples == (25, 25)
    for position in range(0, 50, 7):
        source, row = unpack(mixture.index[position])
        item, expected = mixture[position], mixture.datasets[source][row]
        assert (item["data_source"], item["index"], item["raw_prompt"]) == (
            expected["data_source"], expected["index"], expected["raw_prompt"])
    plain = create_rl_dataset(config.val_files, config, tokenizer, processor, is_train=False)
    assert type(plain) is RLHFDataset and len(plain) == 2


def test_two_data_parallel_ranks_draw_disjoint_halves_of_the_epoch(data: Path, tmp_path: Path, tiny_model: Path,
                                                                    capsys) -> None:
    """verl's SFT trainer on CPU with two processes, through the pipeline: 16 samples, 2 per rank per step, 4 steps
    = one epoch; each rank's draws logged, metrics and summary show the realized mixture."""
    overrides = ["data.train_batch_size=4", "data.max_length=2048", "data.max_token_len_per_gpu=8192",
                 "optim.lr_warmup_steps_ratio=0", "trainer.total_epochs=1", "trainer.save_freq=-1",
                 "trainer.total_training_steps=4", "checkpoint.save_contents=[model,hf_model]"]
    stage = _cpt(data, {"path": "cpt_captions", "weight": 1}, {"path": "cpt_stain", "weight": 3},
                 mixture={"samples": 16}, overrides=overrides)
    config = _pipeline(data, tmp_path, [stage], model=str(tiny_model), device="cpu", gpus_per_node=2)
    assert main(["pipeline", str(config)]) == 0, capsys.readouterr().out[-3000:]
    output = tmp_path / "out"
    draws = sorted((output / "logs" / "cpt.draws").glob("*.jsonl"))
    ranks = {}
    for path in draws:
        for line in path.read_text().splitlines():
            for source, positions in json.loads(line)["positions"].items():
                ranks.setdefault(path.name.split("-")[0], []).extend((source, p) for p in positions)
    assert sorted(ranks) == ["0", "1"] and len(ranks["0"]) == len(ranks["1"]) == 8
    positions = [{p for _, p in drawn} for drawn in ranks.values()]
    assert not positions[0] & positions[1] and positions[0] | positions[1] == set(range(16))
    # each position came from the source the mixture's index says
    mixture = Pipeline.load(config).mixture_plan(Pipeline.load(config).stages[0])
    index = build_index(mixture.rows, mixture.samples, seed=0)
    assert all(mixture.names[unpack(index[p])[0]] == s for drawn in ranks.values() for s, p in drawn)
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    assert last["mixture/cpt_captions/samples"] + last["mixture/cpt_stain/samples"] == 16
    assert last["mixture/cpt_stain/samples"] == 12 and all(math.isfinite(r["train/loss"]) for r in rows)
    summary = (output / "summary.md").read_text()
    assert "| cpt_stain | 75.0% | 12 | 75.0% |" in summary


def _steps_drawn(draws: Path) -> list[dict[str, list[int]]]:
    """The positions each logged batch drew, per source, in the order the batches were drawn."""
    return [{source: sorted(p) for source, p in line["positions"].items()} for _, line in draw_lines(draws)]


def test_a_resumed_run_draws_what_an_uninterrupted_run_draws(data: Path, tmp_path: Path, tiny_model: Path) -> None:
    """verl's SFT trainer on CPU (one process, batches of 4 over a 24-sample mixture): 6 steps straight, against 3
    steps, a checkpoint, and the same command resumed to 6. verl's StatefulDataLoader brings back the sampler, so
    the resumed steps draw the uninterrupted run's batches 4 to 6."""
    overrides = ["data.train_batch_size=4", "data.max_length=2048", "data.max_token_len_per_gpu=8192",
                 "optim.lr_warmup_steps_ratio=0", "trainer.total_epochs=1", "checkpoint.save_contents=[model,optimizer]"]
    runs = {}
    for name, parts in (("straight", [["trainer.total_training_steps=6", "trainer.save_freq=-1"]]),
                        ("resumed", [["trainer.total_training_steps=3", "trainer.save_freq=3"],
                                     ["trainer.total_training_steps=6", "trainer.save_freq=-1"]])):
        stage = _cpt(data, {"path": "cpt_captions", "weight": 1}, {"path": "cpt_stain", "weight": 2},
                     mixture={"samples": 24, "seed": 7}, overrides=overrides)
        (tmp_path / name).mkdir()
        pipeline = Pipeline.load(_pipeline(data, tmp_path / name, [stage], model=str(tiny_model), device="cpu"))
        environment = {**os.environ, **pipeline.environment(pipeline.stages[0])}
        (pipeline.output / "logs").mkdir(parents=True)  # where the pipeline points verl's file logger
        for part in parts:
            done = subprocess.run([*pipeline.command(0), *part], env=environment, capture_output=True, text=True,
                                  timeout=900)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        runs[name] = _steps_drawn(pipeline.output / "logs" / "cpt.draws")
    straight, resumed = runs["straight"], runs["resumed"]
    assert len(straight) == len(resumed) == 6 and sum(len(p) for b in straight for p in b.values()) == 24
    assert resumed == straight
    drawn = {p for batch in straight for positions in batch.values() for p in positions}
    assert drawn == set(range(24))  # the whole epoch, each sample once
