"""BFCL function calling: pool rows and the `bfcl_ast` reward (BFCL's decoder and AST checker)."""

import json
import subprocess
import sys
from functools import cache

import pytest

from metis_core.domains.function_calling import (
    CATEGORIES,
    INSTRUCTION_TEMPLATE,
    _import_bfcl,
    bfcl_reward,
    bfcl_rows,
    decode_calls,
)

CONTRACT = {"prompt", "answer", "task", "difficulty", "metadata", "domain", "reward"}


@cache
def rows_by_id(category: str) -> dict[str, dict[str, str]]:
    return {json.loads(r["metadata"])["bfcl_id"]: r for r in bfcl_rows(category)}


def score(row: dict[str, str], completion: str) -> tuple[float | None, float | None]:
    """(discrete, continuous) score of one completion."""
    (d,) = bfcl_reward([completion], **{**row, "mode": "discrete"})
    (c,) = bfcl_reward([completion], **{**row, "mode": "continuous"})
    return d, c


def _value(accepted):
    """A ground-truth value as a literal: dicts map keys to accepted values (first taken)."""
    if isinstance(accepted, dict):
        return {k: vals[0] for k, vals in accepted.items() if vals[0] != ""}
    if isinstance(accepted, list):
        return [_value(x) if isinstance(x, dict) else x for x in accepted]
    return accepted


def render(row: dict[str, str]) -> str:
    """The ground truth as `[f(a=1, b='x')]`: the first accepted value of each argument; an
    argument whose first value is `""` (optional) is left out unless the docs require it."""
    docs = {d["name"]: d["parameters"] for d in json.loads(row["metadata"])["functions"]}
    calls = []
    for call in json.loads(row["answer"]):
        ((name, args),) = call.items()
        parts = []
        for param, accepted in args.items():
            if param in docs[name]["required"]:
                accepted = [v for v in accepted if v != ""] or [""]
            if param in docs[name]["properties"] and accepted[0] != "":
                parts.append(f"{param}={_value(accepted[0])!r}")
            elif param in docs[name]["required"]:
                parts.append(f"{param}=''")
        calls.append(f"{name}({', '.join(parts)})")
    return "[" + ", ".join(calls) + "]"


# --- loader ---------------------------------------------------------------------------------


def test_import_is_cheap_and_registers_the_reward():
    code = (
        "import sys, metis_core.domains.function_calling as fc\n"
        "from metis_core.rewards.registry import REWARDS\n"
        "assert REWARDS['bfcl_ast'] is fc.bfcl_reward\n"
        "assert not [m for m in sys.modules if m.startswith('bfcl_eval')], 'bfcl imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("category", CATEGORIES)
def test_rows_follow_the_contract(category):
    rows = bfcl_rows(category)
    assert rows and all(
        set(r) == CONTRACT and all(isinstance(v, str) for v in r.values()) for r in rows
    )
    ids = [json.loads(r["metadata"])["bfcl_id"] for r in rows]
    assert len(set(ids)) == len(ids)
    row, meta = rows[0], json.loads(rows[0]["metadata"])
    assert (row["domain"], row["reward"], row["task"]) == (
        "function_calling",
        "bfcl_ast",
        f"bfcl_{category}",
    )
    assert row["difficulty"] in {"simple", "multiple", "parallel", "parallel_multiple"}
    assert meta["category"] == category and meta["functions"]
    assert "[func_name1(params_name1=params_value1" in row["prompt"]
    assert json.dumps(meta["functions"], indent=4) in row["prompt"]
    assert isinstance(json.loads(row["answer"]), list)


def test_sizes_and_difficulty_labels():
    sizes = {c: len(bfcl_rows(c)) for c in ("simple_python", "live_simple", "multiple", "parallel")}
    # live_simple has 258 entries; 2 have ground truths no output can pass (dropped)
    assert sizes == {"simple_python": 400, "live_simple": 256, "multiple": 200, "parallel": 200}
    assert "live_simple_106-63-0" not in rows_by_id("live_simple")
    assert {r["difficulty"] for r in bfcl_rows("live_parallel_multiple")} == {"parallel_multiple"}
    assert {r["difficulty"] for r in bfcl_rows("simple_python", limit=3)} == {"simple"}


def test_live_system_message_goes_before_the_question():
    prompt = rows_by_id("live_simple")["live_simple_58-27-0"]["prompt"]
    assert prompt.startswith(INSTRUCTION_TEMPLATE.split("{functions}")[0])
    system = prompt.index("You are an AI chatbot who helps users in providing information")
    assert prompt.index('"name": ') < system < prompt.index("list movies in Mumbai?")


def test_limit_is_a_seeded_subset():
    a, b = bfcl_rows("multiple", limit=20, seed=3), bfcl_rows("multiple", limit=20, seed=3)
    c = bfcl_rows("multiple", limit=20, seed=4)
    assert a == b and len(a) == 20 and a != c
    assert len(bfcl_rows("live_parallel", limit=1000)) == 16  # all when the limit is larger


@pytest.mark.parametrize(
    ("category", "words"),
    [
        ("no_such_category", "unknown"),
        ("multi_turn_base", "multi-turn"),
        ("irrelevance", "no ground-truth"),
    ],
)
def test_unsupported_categories_raise_naming_them(category, words):
    with pytest.raises(ValueError, match=category) as err:
        bfcl_rows(category)
    assert words in str(err.value) and "live_simple" in str(err.value)  # lists the valid ones


def test_instruction_is_bfcls_default_prompt():
    _import_bfcl()  # installs the stand-in for bfcl's model_config
    from bfcl_eval.constants.default_prompts import DEFAULT_SYSTEM_PROMPT_FORMAT
    from bfcl_eval.model_handler.utils import formulate_system_prompt

    functions = json.loads(bfcl_rows("parallel", limit=1)[0]["metadata"])["functions"]
    expected = formulate_system_prompt(DEFAULT_SYSTEM_PROMPT_FORMAT, functions)
    assert INSTRUCTION_TEMPLATE.format(functions=json.dumps(functions, indent=4)) == expected


# --- reward ---------------------------------------------------------------------------------


@pytest.mark.parametrize("category", ["live_simple", "simple_python", "multiple", "parallel"])
def test_ground_truths_score_one(category):
    for row in bfcl_rows(category, limit=20, seed=7):
        assert score(row, render(row)) == (1.0, 1.0), render(row)


def test_every_kept_ground_truth_passes():
    """The loader keeps only rows some output can pass (BFCL has a few it cannot)."""
    rows = [r for c in CATEGORIES for r in bfcl_rows(c)]
    failed = [r for r in rows if bfcl_reward([render(r)], mode="discrete", **r) != [1.0]]
    assert not [json.loads(r["metadata"])["bfcl_id"] for r in failed]


def test_one_wrong_argument_of_three():
    row = rows_by_id("simple_python")["simple_python_3"]  # algebra.quadratic_roots(a=1, b=-3, c=2)
    assert score(row, "[algebra.quadratic_roots(a=1, b=-3, c=2)]") == (1.0, 1.0)
    assert score(row, "[algebra.quadratic_roots(a=1, b=3, c=2)]") == (0.0, 0.75)  # (1+2)/(1+3)
    assert score(row, "[algebra.quadratic_roots(a=1, b=-3)]") == (0.0, 0.75)  # missing c
    assert score(row, "[algebra.quadratic_roots(a='1', b='-3', c='2')]") == (0.0, 0.25)  # types
    # all values right, but something the checker rejects: capped below 1
    assert score(row, "[algebra.quadratic_roots(a=1, b=-3, c=2, d=0)]") == (0.0, 0.75)
    assert score(
        row, "[algebra.quadratic_roots(a=1, b=-3, c=2), algebra.quadratic_roots(a=1)]"
    ) == (0.0, 0.75)


def test_wrong_function_name_scores_zero():
    row = rows_by_id("simple_python")["simple_python_3"]
    assert score(row, "[algebra.quadratic(a=1, b=-3, c=2)]") == (0.0, 0.0)
    row = rows_by_id("multiple")[
        "multiple_1"
    ]  # math.triangle_area_heron(side1=3, side2=4, side3=5)
    other = next(
        f["name"]
        for f in json.loads(row["metadata"])["functions"]
        if f["name"] != "math.triangle_area_heron"
    )
    assert score(row, f"[{other}(side1=3, side2=4, side3=5)]") == (0.0, 0.0)
    assert score(row, "[math.triangle_area_heron(side1=3, side2=4, side3=5)]") == (1.0, 1.0)


def test_string_values_use_bfcls_normalisation():
    row = rows_by_id("live_simple")[
        "live_simple_0-0-0"
    ]  # get_user_info(user_id=7890, special='black')
    assert score(row, "[get_user_info(user_id=7890, special='Black')]") == (1.0, 1.0)
    assert score(row, "[get_user_info(user_id=7890, special='white')]") == (0.0, 2 / 3)


def test_parallel_calls_match_in_any_order_with_partial_credit():
    row = rows_by_id("parallel")["parallel_0"]  # spotify.play x2: Taylor Swift 20, Maroon 5 15
    swift, maroon = (
        "spotify.play(artist='Taylor Swift', duration=20)",
        "spotify.play(artist='Maroon 5', duration=15)",
    )
    assert score(row, f"[{maroon}, {swift}]") == (1.0, 1.0)
    assert score(row, f"[{swift}]") == (0.0, 0.5)  # one call missing: 3 of 6 points
    assert score(row, f"[{swift}, spotify.play(artist='Maroon 5', duration=20)]") == (0.0, 5 / 6)
    assert score(row, f"[{swift}, {maroon}, {swift}]") == (0.0, 5 / 6)  # an extra call: capped


def test_lenient_decoding():
    row = rows_by_id("simple_python")["simple_python_3"]
    call = "algebra.quadratic_roots(a=1, b=-3, c=2)"
    for completion in [
        f"{call}]",  # after the prefilled "["
        f"{call}] That solves x^2 - 3x + 2.",
        call,
        f"```python\n[{call}]\n```",
        f"Sure! Here's the call: [{call}] Let me know if you'd like more.",
        f"<think>maybe [algebra.quadratic_roots(a=2)]</think>\n[{call}]",
        f"  [{call}]\n",
    ]:
        assert score(row, completion) == (1.0, 1.0), completion


def test_decoder_keeps_bfcls_arithmetic_but_never_evaluates_code():
    assert decode_calls("[f(a=3*4, b=-2)]") == [{"f": {"a": 12, "b": -2}}]
    assert decode_calls("[f(a=2**8)]") == []  # `**` can hang when evaluated
    assert decode_calls("[f(a=(lambda: 1))]") == []
    probe = "[f(a=__import__('sys').modules.setdefault('metis_probe', 1) + 1)]"
    assert decode_calls(probe) == [] and "metis_probe" not in sys.modules


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        " ",
        "hello",
        "[",
        "]",
        "[[[",
        "]]][[",
        "[algebra.quadratic_roots(a=1, b=-3, c=",
        "[1, 2, 3]",
        "[f(a=1)",
        "None",
        "[f(**x)]",
        "[f(a=\\d)]",
        "[f(a='\\d')]",
        "x" * 5000,
        "[" * 300 + "]" * 300,
        "```",
        "[]",
        "</think>",
        "[f(a=1)] [g(]",
        "\x00\udcff",
    ],
)
def test_garbage_scores_zero_without_raising(garbage):
    row = rows_by_id("simple_python")["simple_python_3"]
    assert score(row, garbage) == (0.0, 0.0)
    row = rows_by_id("parallel")["parallel_0"]
    assert score(row, garbage) == (0.0, 0.0)


def test_scores_a_batch():
    row = rows_by_id("parallel")["parallel_0"]
    scores = bfcl_reward([render(row)] * 64 + ["junk"] * 64, mode="continuous", **row)
    assert scores == [1.0] * 64 + [0.0] * 64


def test_unknown_mode_raises():
    row = rows_by_id("simple_python")["simple_python_3"]
    with pytest.raises(ValueError, match="mode"):
        bfcl_reward(["[]"], **{**row, "mode": "partial"})


# --- constrained decoding -------------------------------------------------------------------
@pytest.mark.parametrize("category", ["live_simple", "simple_python", "parallel", "multiple"])
def test_call_regex_admits_ground_truths_and_refuses_other_names(category):
    import re

    from metis_core.domains.function_calling import call_regex

    rows = bfcl_rows(category, limit=60, seed=0)
    admitted = 0
    for row in rows:
        pattern = re.compile(call_regex(json.loads(row["metadata"])["functions"]))
        truth = render(row)[1:]  # the prefill holds the opening "["
        assert not pattern.fullmatch("not_a_documented_function()]")
        if "=" in truth:  # `param: value` is not the format
            assert not pattern.fullmatch(truth.replace("=", ": ", 1))
        # flat literals only: nested lists or dicts are outside the format
        if re.search(r"\[[^\]]*\[|\{[^}]*[\[{]", truth):
            continue
        admitted += bool(pattern.fullmatch(truth))
    assert admitted >= 0.8 * len(rows), (admitted, len(rows))
