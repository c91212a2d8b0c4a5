"""The job model, the reader of job directories and the template / reward options pairing."""

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pytest

from medverl.cli import main
from medverl.data.job import Job, JobError, Reject, windows
from medverl.data.prepared import PreparedError, open_prepared
from medverl.data.references import check_reward_options


def _records(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"question": f"q{i}?", "answer": "yes", "query_type": "yes_no"}) + "\n"
                            for i in range(n)))
    return path


@pytest.mark.parametrize(
    ("size", "start", "expected"),
    [
        (2, 0, [(0, [0, 1]), (2, [2, 3]), (4, [4])]),  # the last window is short
        (2, 2, [(2, [2, 3]), (4, [4])]),  # resumed after two records
        (5, 0, [(0, [0, 1, 2, 3, 4])]),  # one window holds everything
        (2, 5, []),  # nothing left
    ],
)
def test_windows(size: int, start: int, expected: list) -> None:
    assert list(windows(range(5), size, start)) == expected


def test_a_job_accounts_for_every_record_and_resumes_at_its_last_window(tmp_path: Path) -> None:
    with Job(tmp_path / "out", "demo", {"inputs": ["x"]}, lines="kept.jsonl") as job:
        job.write_line('{"a": 1}')
        job.reject(Reject("bad", "why", 2, "x:2", "{"))
        job.commit(2)
        job.write_line('{"a": 3}')  # a window that never commits
    with pytest.raises(JobError, match="pass --resume"):
        Job(tmp_path / "out", "demo", {"inputs": ["x"]}, lines="kept.jsonl")
    with pytest.raises(JobError, match='inputs: \\["x"\\] then, \\["y"\\] now'):
        Job(tmp_path / "out", "demo", {"inputs": ["y"]}, resume=True, lines="kept.jsonl")
    with Job(tmp_path / "out", "demo", {"inputs": ["x"]}, resume=True, lines="kept.jsonl") as job:
        assert (job.read, job.written, job.rejected) == (2, 1, 1)
        job.write_table(pa.table({"a": [4]}))
        job.commit(1)
        manifest = job.finish(note="done")
    assert (tmp_path / "out" / "kept.jsonl").read_text() == '{"a": 1}\n'  # the uncommitted line is gone
    assert json.loads((tmp_path / "out" / "rejects.jsonl").read_text()) == {
        "index": 2, "source": "x:2", "code": "bad", "reason": "why", "excerpt": "{"}
    assert (manifest["read"], manifest["written"], manifest["rejected"], manifest["note"]) == (3, 2, 1, "done")
    assert manifest["rejected_by_reason"] == {"bad": 1}
    shard = tmp_path / "out" / "part-00000.parquet"
    assert manifest["shards"] == [{"file": shard.name, "rows": 1, "bytes": shard.stat().st_size,
                                   "sha256": hashlib.sha256(shard.read_bytes()).hexdigest()}]
    with Job(tmp_path / "bad", "demo", {}) as job:
        job.commit(1)  # a record neither written nor rejected
        with pytest.raises(RuntimeError, match="read 1 != written 0 \\+ rejected 0"):
            job.finish()


def test_resume_refuses_an_input_whose_content_changed(tmp_path: Path) -> None:
    source = _records(tmp_path / "rl.jsonl", 3)
    args = ["prep", "rl", str(source), "--output", str(tmp_path / "out")]
    assert main(args) == 0
    assert main([*args, "--resume"]) == 0  # complete: nothing to do
    _records(source, 4)
    assert main([*args, "--resume"]) == 2


def test_the_reader_knows_the_kind_and_says_what_is_wrong(tmp_path: Path, capsys) -> None:
    assert main(["prep", "rl", str(_records(tmp_path / "rl.jsonl", 2)), "--output", str(tmp_path / "rl")]) == 0
    prepared = open_prepared(tmp_path / "rl", ("rl",))
    assert prepared.kind == "rl" and prepared.template["name"] == "think_answer" and len(list(prepared.rows())) == 2
    with pytest.raises(PreparedError, match="holds rl data; this command reads sft data"):
        open_prepared(tmp_path / "rl", ("sft",))
    assert main(["qc", "filter", str(tmp_path / "rl"), "--output", str(tmp_path / "f")]) == 2
    assert "qc_scores data is made by medverl qc score" in capsys.readouterr().err  # the command line says the fix
    with pytest.raises(PreparedError, match="has no manifest.json"):
        open_prepared(tmp_path, ("rl",))
    assert main(["rewards", "check", str(tmp_path / "rl")]) == 0
    assert "all 2 references can be scored" in capsys.readouterr().out
    assert main(["validate", str(tmp_path / "rl")]) == 0
    assert "not run: pass --processor" in capsys.readouterr().out
    assert main(["validate", str(tmp_path / "rl"), "--processor", str(tmp_path / "no-model")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_everything_rejected_exits_1(tmp_path: Path) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text('{"question": "q?"}\n')
    assert main(["prep", "rl", str(source), "--output", str(tmp_path / "out")]) == 1


@pytest.mark.parametrize(
    ("template", "kwargs", "problem"),
    [
        ("think_answer", {}, None),
        ("think_answer", {"think_prefilled": True}, "think_answer prompt template, which is scored with "
                                                    "reward_kwargs.think_prefilled=false"),
        ("think_prefilled", {"think_prefilled": True, "format_weight": 0.2}, None),
        ("think_prefilled", {}, "reward_kwargs.think_prefilled=true; the reward options have think_prefilled=false"),
        ("think_answer", {"think_prefiled": True}, "Did you mean 'think_prefilled'"),  # a typo is a problem too
    ],
)
def test_the_template_and_the_reward_options_must_fit(
    tmp_path: Path, template: str, kwargs: dict, problem: str | None, capsys
) -> None:
    out = tmp_path / "rl"
    assert main(["prep", "rl", str(_records(tmp_path / "rl.jsonl", 1)), "--output", str(out), "--template",
                 template]) == 0
    problems = check_reward_options(out, kwargs)
    assert (problems == []) if problem is None else (len(problems) == 1 and problem in problems[0])
    manifest = json.loads((out / "manifest.json").read_text())
    assert check_reward_options(manifest, kwargs) == [p.replace(str(out), "the data") for p in problems]
    flags = ["--think-prefilled"] if kwargs.get("think_prefilled") is True else []
    if "think_prefiled" not in kwargs:
        assert main(["validate", str(out), *flags]) == (0 if problem is None else 1)
