"""Failing parts: a scorer that raises, returns garbage or hangs gives reward 0 with a reason (never
a crash, never NaN), and a history file held by another process is refused with a clear error."""

import faulthandler
import math
import subprocess
import sys
import threading
import time

import pytest

from metis_core.rewards import REWARDS, Failure, arithmetic, register_reward, score_completions
from metis_core.rewards.worker import ScoringFailed, ScoringTimeout, ScoringWorker
from metis_core.store.outcomes import HistoryLockedError, OutcomeStore


@pytest.fixture
def reward():
    """Register a throwaway scorer: `reward(fn, timeout_s=...)` -> its name."""
    names = []

    def register(fn, **kwargs):
        name = f"test_{fn.__name__}_{len(names)}"
        register_reward(name, **kwargs)(fn)
        names.append(name)
        return name

    yield register
    for name in names:
        REWARDS.pop(name)


# --- scorers --------------------------------------------------------------------------------


def test_nan_infinity_and_non_numbers_become_zero_with_a_reason(reward):
    def garbage(completions, **_):
        return [float("nan"), float("inf"), "0.5", Failure("no answer found"), 0.5]

    scores, reasons = score_completions(reward(garbage), list("abcde"), {})
    assert all(math.isfinite(s) for s in scores)
    assert scores == [0.0, 0.0, 0.0, 0.0, 0.5]
    assert "returned nan, not a finite number" in reasons[0]
    assert "returned inf" in reasons[1] and "returned '0.5'" in reasons[2]
    assert reasons[3].endswith(": no answer found") and reasons[4] is None


def test_the_wrong_number_of_scores_zeroes_the_group(reward):
    def short(completions, **_):
        return [1.0]

    def not_a_list(completions, **_):
        return 1.0

    scores, reasons = score_completions(reward(short), ["a", "b"], {})
    assert scores == [0.0, 0.0] and "returned 1 scores for 2 completions" in reasons[0]
    scores, reasons = score_completions(reward(not_a_list), ["a", "b"], {})
    assert scores == [0.0, 0.0] and "returned float for 2 completions" in reasons[1]


def test_a_scorer_that_hangs_is_cut_by_its_time_limit(reward):
    release = threading.Event()

    def hangs(completions, **_):
        release.wait(60)
        return [1.0] * len(completions)

    name = reward(hangs, timeout_s=0.5)
    start = time.monotonic()
    try:
        scores, reasons = score_completions(name, ["a", "b"], {"prompt_id": "p"})
    finally:
        release.set()
    assert time.monotonic() - start < 5
    assert scores == [0.0, 0.0] and reasons[0] == f"{name}: timed out after 0.5 s"


def test_a_pathological_math_answer_times_out_from_any_thread(monkeypatch):
    monkeypatch.setattr(arithmetic, "SCORE_TIMEOUT_S", 2.0)
    row = {"answer": "3", "task": "file", "prompt_id": "p"}
    assert score_completions("math_verify", ["3"], row) == ([1.0], [None])  # worker started

    got = []

    def score():  # Prefect runs tasks in worker threads, where SIGALRM time-outs cannot work
        got.append(score_completions("math_verify", ["\\boxed{9^{9^{9^{9}}}}", "3"], row))

    # unbounded, sympy never returns and holds the GIL: only a C-level watchdog can end the test
    faulthandler.dump_traceback_later(60, exit=True)
    start = time.monotonic()
    try:
        thread = threading.Thread(target=score, daemon=True)
        thread.start()
        thread.join(30)
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert not thread.is_alive() and time.monotonic() - start < 10
    [(scores, reasons)] = got
    assert scores == [0.0, 1.0]
    assert "timed out after 2 s" in reasons[0] and reasons[1] is None
    assert score_completions("math_verify", ["1/2", "3.0"], row)[0] == [0.0, 1.0]  # restarted


def test_reasoning_gym_scores_survive_the_scoring_process():
    row = {"answer": "7", "task": "basic_arithmetic", "metadata": "{}", "prompt_id": "p"}
    scores, reasons = score_completions("reasoning_gym", ["7", "8", "9**9**9**9"], row)
    assert scores == [1.0, 0.0, 0.0] and reasons == [None, None, None]


def test_the_scoring_process_kills_hangs_reports_errors_and_restarts():
    worker = ScoringWorker(timeout_s=0.5)
    try:
        assert worker.call("math:sqrt", 16.0) == 4.0
        with pytest.raises(ScoringTimeout, match="timed out after 0.5 s"):
            worker.call("time:sleep", 30)
        assert worker.call("math:sqrt", 9.0) == 3.0  # a fresh child
        with pytest.raises(ScoringFailed, match="ValueError: math domain error"):
            worker.call("math:sqrt", -1.0)
        with pytest.raises(ScoringFailed, match="TypeError: Object of type Fraction is not JSON"):
            worker.call("fractions:Fraction", "1/2")
        with pytest.raises(ScoringFailed, match=r"died \(exit code 3\)"):
            worker.call("os:_exit", 3)
        assert worker.call("builtins:print", "stray output") is None  # cannot corrupt answers
        child = worker._proc
        for i in range(200):
            assert worker.call("math:sqrt", float(i * i)) == i
        assert worker._proc is child  # one long-lived child serves every call, not one each
    finally:
        worker.close()


# --- the history file -----------------------------------------------------------------------

HOLD = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("held", flush=True)
time.sleep(float(sys.argv[2])) if len(sys.argv) > 2 else sys.stdin.read()
"""


def hold(path, seconds=None):
    """Another process holding a write connection to `path` until its stdin closes (or for
    `seconds`)."""
    args = [sys.executable, "-c", HOLD, str(path)] + ([str(seconds)] if seconds else [])
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def outcome(step, reward):
    return {"run_id": "r", "step": step, "prompt_id": "a", "sample": 0, "reward": reward}


def test_a_history_held_by_another_process_is_refused_clearly_and_left_intact(tmp_path):
    path = tmp_path / "history.duckdb"
    store = OutcomeStore(path, lock_wait_s=0.5)
    store.record_outcomes([outcome(0, 1.0)])
    holder = hold(path)
    try:
        with pytest.raises(HistoryLockedError) as err:
            OutcomeStore(path, lock_wait_s=0.5)
        assert f"another process (PID {holder.pid}) is using {path}: stop it" in str(err.value)
        with pytest.raises(HistoryLockedError, match="is using"):
            store.record_outcomes([outcome(1, 0.0)])
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    reopened = OutcomeStore(path)
    assert reopened.count("outcomes", "r") == 1  # the refused write left nothing behind
    reopened.record_outcomes([outcome(1, 0.0)])
    assert reopened.count("outcomes", "r") == 2


def test_a_briefly_held_history_is_waited_for(tmp_path):
    path = tmp_path / "history.duckdb"
    OutcomeStore(path)
    holder = hold(path, seconds=1.0)
    try:
        store = OutcomeStore(path, lock_wait_s=30)
        assert store.count("outcomes", "r") == 0
    finally:
        holder.wait(timeout=30)
