"""The outcome history: a DuckDB file that feeds the calibration memory and the samplers.

Schema (every write is keyed, and a step's outcomes and judgments are replaced as a whole, so
replaying a step after a crash leaves exactly that step's rows, never duplicates or stale ones):

    prompts   (prompt_id PK, prompt, answer, task, difficulty, domain)
    outcomes  (run_id, step, prompt_id, sample) PK; reward, completion, completion_tokens, reason
              - one row per completion
    judgments (run_id, step, prompt_id) PK; v_hat, parsed, text, tokens, selected,
              realised_variance (NULL unless selected), judge_reward (NULL unless selected)
              - one row per candidate the judge scored
    steps     (run_id, step) PK; recorded_at; metrics (JSON, only in histories written before
              step_values existed: they stay readable)
    step_values (run_id, step, name, value) - one row per metric of a step. Long rows, not one
              JSON text a step: DuckDB rewrites the table's last row group at every checkpoint
              (each call closes the file), so a JSON column made `record_step` grow with the
              run (0.06 s at step 10, 0.17 s at step 5,000, docs/BENCHMARKS.md)

Only one process may hold a DuckDB file open, so each call opens, works and closes. A file held
by another process is waited for (`lock_wait_s`), then refused with HistoryLockedError naming the
file and the holder's PID; nothing is written, so the file stays as it was.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from metis_core.algorithms import ZERO_VARIANCE_TOL
from metis_core.failpoints import failpoint

# Population variance with float rounding snapped to 0, as algorithms.realised_variance does.
_VARIANCE = f"(CASE WHEN var_pop({{x}}) <= {ZERO_VARIANCE_TOL} THEN 0.0 ELSE var_pop({{x}}) END)"

SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
    prompt_id VARCHAR PRIMARY KEY, prompt VARCHAR, answer VARCHAR, task VARCHAR, difficulty VARCHAR,
    domain VARCHAR);
CREATE TABLE IF NOT EXISTS outcomes (
    run_id VARCHAR, step INTEGER, prompt_id VARCHAR, sample INTEGER,
    reward DOUBLE, completion VARCHAR, completion_tokens INTEGER, reason VARCHAR,
    PRIMARY KEY (run_id, step, prompt_id, sample));
CREATE TABLE IF NOT EXISTS judgments (
    run_id VARCHAR, step INTEGER, prompt_id VARCHAR,
    v_hat DOUBLE, parsed BOOLEAN, text VARCHAR, tokens INTEGER, selected BOOLEAN,
    realised_variance DOUBLE, judge_reward DOUBLE,
    PRIMARY KEY (run_id, step, prompt_id));
CREATE TABLE IF NOT EXISTS steps (
    run_id VARCHAR, step INTEGER, metrics VARCHAR, recorded_at TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (run_id, step));
CREATE TABLE IF NOT EXISTS step_values (run_id VARCHAR, step INTEGER, name VARCHAR, value DOUBLE);
"""

_COLUMNS = {
    "prompts": ["prompt_id", "prompt", "answer", "task", "difficulty", "domain"],
    "outcomes": [
        "run_id",
        "step",
        "prompt_id",
        "sample",
        "reward",
        "completion",
        "completion_tokens",
        "reason",
    ],
    "judgments": [
        "run_id",
        "step",
        "prompt_id",
        "v_hat",
        "parsed",
        "text",
        "tokens",
        "selected",
        "realised_variance",
        "judge_reward",
    ],
}


class HistoryLockedError(RuntimeError):
    """Another process holds the history file open (DuckDB allows one process at a time)."""


class OutcomeStore:
    def __init__(self, path: str | Path, lock_wait_s: float = 10.0) -> None:
        self.path = Path(path)
        self.lock_wait_s = lock_wait_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute(SCHEMA)
            # histories written before domains existed hold math only
            con.execute(
                "ALTER TABLE prompts ADD COLUMN IF NOT EXISTS domain VARCHAR DEFAULT 'math'"
            )

    def _open(self) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_wait_s
        while True:
            try:
                return duckdb.connect(str(self.path))
            except duckdb.IOException as err:
                if "lock" not in str(err).lower():
                    raise
                if time.monotonic() >= deadline:
                    pid = re.search(r"PID (\d+)", str(err))
                    holder = f" (PID {pid.group(1)})" if pid else ""
                    raise HistoryLockedError(
                        f"another process{holder} is using {self.path}: stop it (another metis "
                        "run or --resume of this run folder, or a duckdb shell) and try again; to "
                        "read the history meanwhile, open a copy of the file"
                    ) from err
                time.sleep(0.2)

    @contextmanager
    def _connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        con = self._open()
        try:
            yield con
        finally:
            con.close()

    def _upsert(self, table: str, rows: Sequence[dict[str, Any]]) -> int:
        if not rows:
            return 0
        cols = _COLUMNS[table]
        frame = pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)
        with self._connect() as con:
            con.begin()
            con.register("incoming", frame)
            con.execute(
                f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) SELECT {', '.join(cols)} FROM incoming"
            )
            con.commit()
        return len(frame)

    def add_prompts(self, rows: Sequence[dict[str, Any]]) -> int:
        return self._upsert("prompts", rows)

    def record_outcomes(self, rows: Sequence[dict[str, Any]]) -> int:
        return self._upsert("outcomes", rows)

    def record_judgments(self, rows: Sequence[dict[str, Any]]) -> int:
        return self._upsert("judgments", rows)

    def replace_step(
        self,
        run_id: str,
        step: int,
        outcomes: Sequence[dict[str, Any]],
        judgments: Sequence[dict[str, Any]],
    ) -> dict[str, int]:
        """A step's outcome and judgment rows, replacing whatever the step held before, in one
        transaction: a replayed step that chose other prompts leaves none of the old ones."""
        frames = {
            table: pd.DataFrame([{c: r.get(c) for c in _COLUMNS[table]} for r in rows],
                                columns=_COLUMNS[table])
            for table, rows in (("outcomes", outcomes), ("judgments", judgments))
        }  # fmt: skip
        with self._connect() as con:
            con.begin()
            for table, frame in frames.items():
                con.execute(f"DELETE FROM {table} WHERE run_id = ? AND step = ?", [run_id, step])
                failpoint("record-transaction", step)  # a kill here must roll the delete back
                con.register(f"incoming_{table}", frame)
                cols = ", ".join(_COLUMNS[table])
                con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM incoming_{table}")
            con.commit()
        return {table: len(frame) for table, frame in frames.items()}

    def record_step(self, run_id: str, step: int, metrics: dict[str, Any]) -> None:
        """A step's metrics (numbers, or None: kept as NULL), replacing what the step held."""
        values = [None if v is None else float(v) for v in metrics.values()]
        frame = pa.table(  # Arrow keeps NaN apart from NULL (a pandas frame would not)
            {"name": list(metrics), "value": pa.array(values, type=pa.float64())}
        )
        with self._connect() as con:
            con.begin()
            con.execute("DELETE FROM step_values WHERE run_id = ? AND step = ?", [run_id, step])
            con.register("incoming_values", frame)
            con.execute(
                "INSERT INTO step_values SELECT ?, ?, name, value FROM incoming_values",
                [run_id, step],
            )
            con.execute(
                "INSERT OR REPLACE INTO steps (run_id, step, metrics) VALUES (?, ?, NULL)",
                [run_id, step],
            )
            con.commit()

    def recent_variances(
        self,
        run_id: str,
        before_step: int,
        limit: int,
        domain: str | None = None,
    ) -> list[tuple[str, float, int]]:
        """(prompt text, realised variance, step) of the most recent trained prompts (of one
        domain, if given), newest first."""
        sql = f"""
            SELECT p.prompt, {_VARIANCE.format(x="o.reward")} AS v, o.step
            FROM outcomes o JOIN prompts p USING (prompt_id)
            WHERE o.run_id = ? AND o.step >= ? AND o.step < ? AND (? IS NULL OR p.domain = ?)
            GROUP BY o.step, o.prompt_id, p.prompt
            ORDER BY o.step DESC, o.prompt_id
            LIMIT ?
        """
        return self._recent(
            sql, lambda lo: [run_id, lo, before_step, domain, domain, limit], before_step, limit
        )

    def _recent(
        self, sql: str, params: Callable[[int], list[Any]], before_step: int, limit: int
    ) -> list[tuple[Any, ...]]:
        """`sql` (newest first, LIMIT `limit`) over a window of the last steps before
        `before_step`, widened fourfold until it holds `limit` rows or reaches step 0. The same
        rows as over the whole history (everything outside a window is older than everything
        in it), but the cost follows the window, not the run's length: rows are stored in step
        order, so DuckDB's zone maps skip the rest."""
        span = 16
        with self._connect() as con:
            while True:
                lo = before_step - span
                rows = con.execute(sql, params(lo if lo > 0 else -(2**31))).fetchall()
                if len(rows) >= limit or lo <= 0:
                    return rows
                span *= 4

    def past_outcomes(
        self, run_id: str, before_step: int, limit: int
    ) -> list[tuple[str, str, str, str, str, int, float]]:
        """(prompt_id, prompt, task, difficulty, domain, step, realised variance) of the `limit`
        most recently trained prompts before `before_step`, newest first."""
        sql = f"""
            SELECT o.prompt_id, p.prompt, p.task, p.difficulty, p.domain, o.step,
                   {_VARIANCE.format(x="o.reward")} AS v
            FROM outcomes o JOIN prompts p USING (prompt_id)
            WHERE o.run_id = ? AND o.step >= ? AND o.step < ?
            GROUP BY o.step, o.prompt_id, p.prompt, p.task, p.difficulty, p.domain
            ORDER BY o.step DESC, o.prompt_id
            LIMIT ?
        """
        return self._recent(sql, lambda lo: [run_id, lo, before_step, limit], before_step, limit)

    def prompt_stats(self, run_id: str, last_n: int = 10) -> pd.DataFrame:
        """Per prompt: mean and variance of its last `last_n` rewards, rows and steps seen."""
        with self._connect() as con:
            return con.execute(
                f"""
                SELECT prompt_id, avg(reward) AS mean_reward, {_VARIANCE.format(x="reward")} AS reward_variance,
                       count(*) AS rows, count(DISTINCT step) AS steps
                FROM (SELECT *, row_number() OVER (PARTITION BY prompt_id ORDER BY step DESC, sample) AS rn
                      FROM outcomes WHERE run_id = ?)
                WHERE rn <= ? GROUP BY prompt_id
                """,
                [run_id, last_n],
            ).df()

    def judged_selected(self, run_id: str) -> list[tuple[int, float, float]]:
        """(step, v_hat, realised variance) of every selected prompt whose judgment parsed."""
        with self._connect() as con:
            return con.execute(
                "SELECT step, v_hat, realised_variance FROM judgments "
                "WHERE run_id = ? AND selected AND parsed ORDER BY step",
                [run_id],
            ).fetchall()

    def step_metrics(self, run_id: str) -> list[tuple[int, dict[str, float]]]:
        """Every recorded step's metrics, in step order."""
        by_step: dict[int, dict[str, float]] = {}
        with self._connect() as con:
            legacy = con.execute(
                "SELECT step, metrics FROM steps WHERE run_id = ? AND metrics IS NOT NULL",
                [run_id],
            ).fetchall()
            values = con.execute(
                "SELECT step, name, value FROM step_values WHERE run_id = ?", [run_id]
            ).fetchall()
        for step, metrics in legacy:
            by_step[step] = json.loads(metrics)
        for step, name, value in values:
            by_step.setdefault(step, {})[name] = value
        return sorted(by_step.items())

    def latest_metric(self, run_id: str, key: str, through_step: int | None = None) -> float | None:
        """The newest recorded value of one metric (at `through_step` or before, when given),
        None if no step has it. Searches the last steps first, widening fourfold until found: a
        checkpoint asks this at every save of a long run, and the answer is usually a few steps
        back."""
        path = "$." + json.dumps(key)  # a quoted member of legacy JSON: keys hold `/` and `@`
        with self._connect() as con:
            newest = con.execute("SELECT max(step) FROM steps WHERE run_id = ?", [run_id])
            top = newest.fetchone()[0]
            if top is None:
                return None
            if through_step is not None:
                top = min(top, through_step)
            window = 64
            while True:
                found = con.execute(
                    "SELECT step, value FROM step_values WHERE run_id = ? AND name = ? "
                    "AND step BETWEEN ? AND ? AND value IS NOT NULL "
                    "UNION ALL SELECT step, CAST(json_extract(metrics, ?) AS DOUBLE) FROM steps "
                    "WHERE run_id = ? AND step BETWEEN ? AND ? AND metrics IS NOT NULL "
                    "AND json_extract(metrics, ?) IS NOT NULL ORDER BY step DESC LIMIT 1",
                    [run_id, key, top - window, top, path, run_id, top - window, top, path],
                ).fetchone()
                if found is not None or top - window < -1:
                    return None if found is None else float(found[1])
                window *= 4

    def count(self, table: str, run_id: str, step: int | None = None) -> int:
        if table not in ("outcomes", "judgments", "steps"):
            raise ValueError(f"unknown table {table!r}")
        sql = f"SELECT count(*) FROM {table} WHERE run_id = ?" + (
            " AND step = ?" if step is not None else ""
        )
        with self._connect() as con:
            return con.execute(sql, [run_id] + ([step] if step is not None else [])).fetchone()[0]
