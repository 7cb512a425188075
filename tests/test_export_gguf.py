"""The export_gguf stage: agreement measures, the empty default, and its refusals.

The export itself needs llama.cpp's converter (``make llamacpp-venv``); its end-to-end test is in
``tests/test_llamacpp_backend.py`` (``make test-llamacpp``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from stages import export_gguf
from stages.export_gguf import answer_agreement, session_agreement

ROOT = Path(__file__).resolve().parents[1]


def _answer(case_id: str, calls: list[dict] | None = None, content: str | None = None) -> dict:
    return {"id": case_id, "answer": {"content": content, "calls": calls or [], "finish": "stop"}}


CALL_A = {"name": "a", "arguments": {"x": 1}}
CALL_A2 = {"name": "a", "arguments": {"x": 2}}


def test_answer_agreement_counts_each_measure() -> None:
    reference = [_answer("1", [CALL_A]), _answer("2", [CALL_A]), _answer("3", content="hi"),
                 _answer("4", content="hi"), _answer("5", [CALL_A])]
    answers = [_answer("2", [CALL_A2]),  # same decision, other arguments
               _answer("1", [CALL_A]),  # identical (order of rows does not matter)
               _answer("3", content="hi"),  # identical text
               _answer("4", content="hello"),  # both text: same calls (none), not identical
               _answer("5", content="no")]  # other decision
    got = answer_agreement(reference, answers)
    assert got == {"cases": 5, "cases_identical": 2 / 5, "calls_identical": 3 / 5, "decisions_same": 4 / 5,
                   "failed_requests": 0}


def test_failed_requests_never_agree() -> None:
    failed = {"content": None, "calls": [], "finish": "error"}
    reference = [_answer("1"), {"id": "2", "answer": failed}]
    answers = [{"id": "1", "answer": failed}, {"id": "2", "answer": failed}]
    assert answer_agreement(reference, answers) == {"cases": 2, "cases_identical": 0.0, "calls_identical": 0.0,
                                                    "decisions_same": 0.0, "failed_requests": 2}
    both_error = [_session("s", [([], "error")])]
    assert session_agreement(both_error, both_error) == {"turns": 1, "turns_same": 0.0}


def test_same_cases_refuses_another_devset(tmp_path: Path) -> None:
    for name, outcome in (("ref", (["a"], None)), ("gguf", (["b"], "wrong_function"))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "cases.jsonl").write_text('{"id": "simple_0"}\n')
        (tmp_path / name / "sessions.jsonl").write_text(json.dumps(_session("s", [outcome])) + "\n")
    export_gguf.same_cases(tmp_path / "ref", tmp_path / "gguf")  # outcomes may differ, scripts may not
    (tmp_path / "gguf" / "sessions.jsonl").write_text(json.dumps({"id": "s", "system": "other", "outcome": {}}) + "\n")
    with pytest.raises(ValueError, match="sessions differ"):
        export_gguf.same_cases(tmp_path / "ref", tmp_path / "gguf")
    export_gguf.same_cases(tmp_path / "ref", tmp_path / "gguf", sessions=False)  # sessions not played
    (tmp_path / "gguf" / "cases.jsonl").write_text('{"id": "simple_1"}\n')
    with pytest.raises(ValueError, match="cases differ"):
        export_gguf.same_cases(tmp_path / "ref", tmp_path / "gguf")


def test_answer_agreement_refuses_other_cases() -> None:
    with pytest.raises(ValueError, match="different cases"):
        answer_agreement([_answer("1"), _answer("2")], [_answer("1")])
    with pytest.raises(ValueError, match="not in the reference"):
        answer_agreement([_answer("1")], [_answer("9")])


def _session(session_id: str, turns: list[tuple[list[str], str | None]]) -> dict:
    return {"id": session_id, "outcome": {"turns": [{"calls": c, "failure": f} for c, f in turns]}}


def test_session_agreement_compares_turns() -> None:
    reference = [_session("s1", [(["list"], None), (["add"], None)]), _session("s2", [([], "stopped_early")])]
    sessions = [_session("s2", [([], "stopped_early")]),
                _session("s1", [(["list"], None), (["add", "add"], "did_not_stop")])]
    assert session_agreement(reference, sessions) == {"turns": 3, "turns_same": 2 / 3}
    with pytest.raises(ValueError, match="different sessions"):
        session_agreement(reference, sessions[:1])


def _params(tmp_path: Path, **export: object) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["export_gguf"].update(export)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def test_default_writes_an_empty_manifest_without_llamacpp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = _params(tmp_path, llamacpp_venv=str(tmp_path / "none"))
    assert yaml.safe_load(params.read_text())["export_gguf"]["types"] == []  # the CPU default
    monkeypatch.chdir(tmp_path)
    assert export_gguf.main(["--params", str(params)]) == 0
    assert json.loads((tmp_path / "models/gguf/manifest.json").read_text())["files"] == []
    metrics = json.loads((tmp_path / "metrics/gguf.json").read_text())
    assert metrics["types"] == {} and metrics["model"] == "models/stage2"


def test_refuses_without_reference_answers_or_llamacpp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    params = _params(tmp_path, types=["q8_0"], llamacpp_venv=str(tmp_path / "none"))
    assert export_gguf.main(["--params", str(params)]) == 2
    assert "no reference answers" in caplog.text and "evaluate stage" in caplog.text
    # Without the agreement run, the export itself names what is missing.
    caplog.clear()
    (tmp_path / "models/stage2").mkdir(parents=True)
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts/export_gguf.sh", tmp_path / "scripts/export_gguf.sh")
    params = _params(tmp_path, types=["q8_0"], agreement=False, llamacpp_venv=str(tmp_path / "none"))
    assert export_gguf.main(["--params", str(params)]) == 2
    assert "exporting models/stage2 as q8_0 failed" in caplog.text and "llamacpp_venv.sh" in caplog.text
    assert not (tmp_path / "metrics/gguf.json").exists()
