"""The cached stages (tasks/stages.py): a replayed step is served the stage's earlier result, and a
result file that a kill or a full disk left damaged costs a rerun of that stage, never a failed or
a wrong step. A real temporary Prefect server; the stage itself is a counter."""

from pathlib import Path
from types import SimpleNamespace

import pytest
from prefect import flow
from prefect.testing.utilities import prefect_test_harness

from metis_core.config import RunConfig
from metis_core.run import Run, write_json
from tasks.runtime import register, release
from tasks.stages import _cached


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=240):
        yield


def _bare_run(run_id: str, run_dir: Path) -> Run:
    """A Run with only what the stage cache reads (its id, folder and config); an engine and a
    trainer that only close."""
    closes = SimpleNamespace(close=lambda: None)
    return Run(cfg=RunConfig(), run_id=run_id, run_dir=run_dir, model_dir=run_dir, pool=None,
               engine=closes, trainer=closes, store=None, tracker=None, sampler=None,
               baseline=None)  # type: ignore[arg-type]  # fmt: skip


DAMAGE = {
    "cut in half": lambda data: data[: len(data) // 2],
    "emptied": lambda data: b"",
    "overwritten": lambda data: b"\x00garbage" * 8,
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_stage_result_reruns_the_stage(prefect_server, tmp_path, damage):
    run_id = f"cache-{damage.replace(' ', '-')}"
    register(run_id, _bare_run(run_id, tmp_path))
    calls: list[int] = []

    @_cached("judge")
    def judge(run_id: str, step: int) -> str:
        calls.append(step)
        return str(write_json(tmp_path / f"judge-{len(calls)}.json", {"step": step}))

    @flow(persist_result=False)
    def replay(step: int) -> str:
        return judge(run_id, step)

    try:
        first = replay(3)
        assert replay(3) == first and calls == [3]  # the replay was served the result
        results = [p for p in (tmp_path / ".prefect-results").iterdir() if p.is_file()]
        assert len(results) == 1, results
        results[0].write_bytes(DAMAGE[damage](results[0].read_bytes()))

        again = replay(3)
        assert calls == [3, 3], "a damaged result must run the stage again"
        assert again == str(tmp_path / "judge-2.json") and Path(again).is_file()
        assert replay(3) == again and calls == [3, 3]  # and its new result is served again
    finally:
        release(run_id)
