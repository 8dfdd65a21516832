"""The code domain's rows, and the procedural Python function tasks it generates.

Each template is a small function with a reference body that is never shown: drawn parameters
fill its signature and docstring, the reference computes the expected outputs of drawn inputs,
and those become the hidden tests (`N_TESTS`) and the docstring's examples (`N_EXAMPLES`). The
prompt format is described in metis_core/domains/code.py.
"""

from __future__ import annotations

import json
import random
import string
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

INSTRUCTION = "Complete the body of this Python function. Reply with the code only."
LEVELS = {1: "easy", 2: "medium", 3: "hard"}
N_TESTS, N_EXAMPLES = 5, 2


def code_row(
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


def code_prompt(header: str) -> str:
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
    row = code_row(
        code_prompt(header), header, name, asserts, "code_procedural", level, template=t.key
    )
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
