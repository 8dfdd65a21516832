"""Function calling: BFCL v4's single-turn AST categories as pool rows, and the `bfcl_ast` reward.

Prompts use BFCL's prompting mode (the function docs as JSON, answer as `[f(a=1), g(b='x')]`);
completions are decoded with BFCL's `default_decode_ast_prompting` and judged by BFCL's
`ast_checker`. bfcl_eval is imported lazily (`_import_bfcl`): importing this module is cheap.
"""

from __future__ import annotations

import ast
import json
import os
import random
import re
import sys
import tempfile
import types
import warnings
from collections import defaultdict
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from metis_core.config_checks import unknown_name
from metis_core.domains.spec import (
    Benchmark,
    DomainConfig,
    DomainSpec,
    TaskSource,
    register_domain,
    takes_no_params,
)

CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "live_simple")
CATEGORIES += ("live_multiple", "live_parallel", "live_parallel_multiple")
"""Supported BFCL v4 categories; the difficulty label drops `live_` and `_python` (`simple`,
`multiple`, `parallel`, `parallel_multiple`), `task` keeps the category."""

_UNSUPPORTED = {  # why the other BFCL v4 categories are refused
    "has no ground-truth call": "irrelevance live_irrelevance live_relevance",
    "is multi-turn": "multi_turn_base multi_turn_long_context multi_turn_miss_func multi_turn_miss_param",
    "is agentic or executed, not AST-checked": "memory web_search format_sensitivity",
    "is not Python": "simple_java simple_javascript",
}

INSTRUCTION_TEMPLATE = (
    # BFCL's default prompting-mode system prompt (DEFAULT_SYSTEM_PROMPT_FORMAT: python calls, no
    # tag, JSON docs, plaintext, classic), verbatim with its quirks ("functions.You", ".  You"),
    # so that scores compare with BFCL's prompting evaluation. A test pins it to BFCL's formatter.
    "You are an expert in composing functions.You are given a question and a set of possible "
    "functions. Based on the question, you will need to make one or more function/tool calls to "
    "achieve the purpose. If none of the functions can be used, point it out. If the given "
    "question lacks the parameters required by the function, also point it out.\n\n"
    "You should only return the function calls in your response.\n\n"
    "If you decide to invoke any of the function(s), you MUST put it in the format of "
    "[func_name1(params_name1=params_value1, params_name2=params_value2...), func_name2(params)]."
    "  You SHOULD NOT include any other text in the response.\n\n"
    "At each turn, you should try your best to complete the tasks requested by the user within "
    "the current turn. Continue to output functions to call until you have fulfilled the user's "
    "request to the best of your ability. Once you have no more functions to call, the system "
    "will consider the current turn complete and proceed to the next turn or task.\n\n"
    "Here is a list of functions in json format that you can invoke.\n{functions}\n"
)
"""The user message's head; `{functions}` is the docs as `json.dumps(docs, indent=4)`."""

_MODEL_NAME = "metis"  # the checker's `model_name`: only used to look up underscore_to_dot
_FENCE = re.compile(r"```[\w+-]*")
_MAX_CALLS = 32  # calls of one completion considered for partial credit
_ARITH = (ast.BinOp, ast.UnaryOp, ast.Constant, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Mod)
_ARITH += (ast.FloorDiv, ast.USub, ast.UAdd)  # what an evaluated expression may contain

Call = dict[str, dict[str, Any]]
if TYPE_CHECKING:
    from metis_core.config import TaskSpec


@cache
def _import_bfcl() -> types.SimpleNamespace:
    """BFCL's decoder and AST checker, imported offline (once)."""
    # bfcl_eval.constants.eval_config creates result/, score/ and .file_locks/ under
    # BFCL_PROJECT_ROOT (default: site-packages) when imported: keep them out of the venv.
    os.environ.setdefault("BFCL_PROJECT_ROOT", str(Path(tempfile.gettempdir()) / "metis-bfcl"))
    # ast_checker does `from bfcl_eval.constants.model_config import MODEL_CONFIG_MAPPING`, and
    # that module imports every API handler (anthropic, openai, cohere, ...: not installed). The
    # checker only reads MODEL_CONFIG_MAPPING[model].underscore_to_dot, for dotted names; a
    # stand-in module answers False, as for BFCL's local prompting models.
    name = "bfcl_eval.constants.model_config"
    if name not in sys.modules:
        stand_in = types.ModuleType(name, "metis stand-in: MODEL_CONFIG_MAPPING only")
        keep_dots = defaultdict(lambda: types.SimpleNamespace(underscore_to_dot=False))
        stand_in.MODEL_CONFIG_MAPPING = keep_dots  # type: ignore[attr-defined]
        sys.modules[name] = stand_in
    from bfcl_eval.constants.enums import Language
    from bfcl_eval.eval_checker.ast_eval import ast_checker
    from bfcl_eval.model_handler.utils import default_decode_ast_prompting as decode

    return types.SimpleNamespace(decode=decode, checker=ast_checker, python=Language.PYTHON)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _solvable(functions: list[dict[str, Any]], truth: list[Call]) -> bool:
    """False for the BFCL ground truths no output passes: a parameter with no accepted value
    (live_simple_106-63-0, live_simple_112-68-0), a needed one the docs lack
    (live_multiple_862-181-3, live_multiple_964-207-0), a doc-required one the truth lacks."""
    docs = {d["name"]: d["parameters"] for d in functions}
    for name, accepted in (next(iter(t.items())) for t in truth):
        if name not in docs or set(docs[name]["required"]) - set(accepted):
            return False
        props = docs[name]["properties"]
        if any(not v or (p not in props and "" not in v) for p, v in accepted.items()):
            return False
    return True


def bfcl_rows(category: str, *, limit: int | None = None, seed: int = 0) -> list[dict[str, str]]:
    """Pool rows of one BFCL v4 category (its solvable entries); `limit`: a seeded subset.

    prompt: INSTRUCTION_TEMPLATE with the docs, then the question (a live row's system message
    first); answer: JSON of BFCL's ground truth (`[{name: {param: [accepted values]}}]`, `""`
    among the values marks an optional parameter); metadata: `bfcl_id`, `category`, `functions`.
    """
    if category not in CATEGORIES:
        why = next((w for w, c in _UNSUPPORTED.items() if category in c.split()), "is unknown")
        raise ValueError(f"BFCL category {category!r} {why}; supported: {', '.join(CATEGORIES)}")
    import bfcl_eval  # an empty __init__: only its data files are read here

    data = Path(bfcl_eval.__file__).parent / "data"
    entries = _jsonl(data / f"BFCL_v4_{category}.json")
    answers = _jsonl(data / "possible_answer" / f"BFCL_v4_{category}.json")
    truth = {a["id"]: a["ground_truth"] for a in answers}
    entries = [e for e in entries if _solvable(e["function"], truth[e["id"]])]
    if limit is not None and limit < len(entries):
        keep = sorted(random.Random(seed).sample(range(len(entries)), limit))
        entries = [entries[i] for i in keep]
    difficulty = category.removeprefix("live_").removesuffix("_python")
    common = {"task": f"bfcl_{category}", "difficulty": difficulty}
    common |= {"domain": "function_calling", "reward": "bfcl_ast"}
    rows = []
    for entry in entries:
        messages = entry["question"][0]  # one turn, [system,] user in all of these categories
        docs = INSTRUCTION_TEMPLATE.format(functions=json.dumps(entry["function"], indent=4))
        meta = {"bfcl_id": entry["id"], "category": category, "functions": entry["function"]}
        prompt = docs + "\n" + "\n\n".join(m["content"] for m in messages)
        answer, metadata = json.dumps(truth[entry["id"]]), json.dumps(meta)
        rows.append({"prompt": prompt, "answer": answer, "metadata": metadata, **common})
    return rows


def _spans(text: str) -> list[str]:
    """Top-level `[...]` spans of `text`; quotes are honoured inside brackets only (prose has
    apostrophes)."""
    spans: list[str] = []
    depth, start, quote, escaped = 0, 0, "", False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quote:
            escaped, quote = ch == "\\", "" if ch == quote else quote
        elif ch in "'\"" and depth:
            quote = ch
        elif ch == "[" or (ch == "]" and depth):
            depth += 1 if ch == "[" else -1
            start = i if ch == "[" and depth == 1 else start
            spans += [text[start : i + 1]] if depth == 0 else []
    return spans


def _is_safe(tree: ast.AST) -> bool:
    """BFCL's decoder `eval`s arithmetic (ast.BinOp) and lambdas: allow numeric arithmetic only
    (no `**`/`<<`, which can hang), never lambdas or calls inside an evaluated expression."""
    nodes = list(ast.walk(tree))
    evaluated = [n for b in nodes if isinstance(b, ast.BinOp) for n in ast.walk(b)]
    numbers = [n.value for n in evaluated if isinstance(n, ast.Constant)]
    return (
        not any(isinstance(n, ast.Lambda) for n in nodes)
        and all(isinstance(n, _ARITH) for n in evaluated)
        and all(type(v) in (int, float) and abs(v) < 1e12 for v in numbers)
    )


def _decode(text: str) -> list[Call]:
    """BFCL's decoding of one candidate (it adds a missing `[` or `]`); [] when it fails."""
    text = text.strip("`\n ")
    text = ("" if text.startswith("[") else "[") + text + ("" if text.endswith("]") else "]")
    try:
        with warnings.catch_warnings():  # e.g. SyntaxWarning for "\d" in a model's string
            warnings.simplefilter("ignore")
            if not _is_safe(ast.parse(text, mode="eval")):
                return []
            calls = _import_bfcl().decode(text)
    except Exception:  # anything a model can write: SyntaxError, AssertionError, recursion, ...
        return []
    return calls  # a list of {name: {param: value}} by construction (resolve_ast_call)


def decode_calls(completion: str) -> list[Call]:
    """The calls of a completion, `[{name: {param: value}}]`, or [] if none can be read.

    Lenient: text after a `</think>` only, code fences dropped, then the first that decodes of:
    the whole text, the text after a prefilled `[` (up to its matching `]`), each top-level
    `[...]` span in order. The first readable list counts, never the best one: listing several
    guesses does not pay.
    """
    if not isinstance(completion, str):
        return []
    text = _FENCE.sub(" ", completion.rsplit("</think>", 1)[-1]).strip()
    for candidate in [text, *_spans("[" + text)[:1], *_spans(text)][:16]:
        calls = _decode(candidate)
        if calls:
            return calls
    return []


def _required(doc: dict[str, Any], accepted: dict[str, list[Any]]) -> list[str]:
    """Parameters the checker needs: required by the docs, or with no `""` among their values."""
    needed = doc["parameters"]["required"]
    return [p for p, values in accepted.items() if "" not in values or p in needed]


def _verdict(check: Any, *args: Any) -> bool:
    """A BFCL checker's verdict; False where it trips on the output's shape (it assumes some)."""
    try:
        return bool(check(*args, _MODEL_NAME)["valid"])
    except Exception:
        return False


def _call_points(doc: dict[str, Any], name: str, accepted: dict[str, Any], args: dict) -> int:
    """1 for the name + 1 per required argument whose value BFCL's checker accepts alone."""
    bfcl, props = _import_bfcl(), doc["parameters"]["properties"]
    points = 1
    for p in (p for p in _required(doc, accepted) if p in args and p in props):
        one = {"name": name, "parameters": {"properties": {p: props[p]}, "required": []}}
        got, want = {name: {p: args[p]}}, {name: {p: accepted[p]}}
        points += _verdict(bfcl.checker.simple_function_checker, one, got, want, bfcl.python)
    return points


def partial_credit(
    functions: list[dict[str, Any]], calls: list[Call], truth: list[Call]
) -> tuple[int, int]:
    """(points earned, points possible), under the best one-to-one matching of calls to expected
    calls of the same name (see `bfcl_reward`)."""
    docs = {d["name"]: d for d in functions}
    expected = [next(iter(t.items())) for t in truth]
    total = sum(1 + len(_required(docs[name], accepted)) for name, accepted in expected)
    made = [next(iter(c.items())) for c in calls[:_MAX_CALLS]]
    gain = [
        [_call_points(docs[name], name, accepted, args) if got == name else 0 for got, args in made]
        for name, accepted in expected
    ]
    best = {0: 0}  # set of matched expected calls (bit mask) -> most points
    for j in range(len(made)):
        for mask, points in list(best.items()):
            for i, row in enumerate(gain):
                if row[j] and not mask >> i & 1 and best.get(mask | 1 << i, -1) < points + row[j]:
                    best[mask | 1 << i] = points + row[j]
    return max(best.values()), total


def bfcl_reward(
    completions: list[str],
    *,
    answer: str,
    metadata: str,
    task: str,
    mode: str = "continuous",
    **_: Any,
) -> list[float | None]:
    """BFCL AST scores of completions (decoded by `decode_calls`; unreadable: 0.0, never raises).

    discrete: 1.0 when BFCL's `ast_checker` accepts the calls, else 0.0.
    continuous: each expected call is worth 1 point for its function name plus 1 per argument
    the checker insists on (required by the docs, or no `""` among its accepted values). An
    argument's point is earned when BFCL's own checker accepts its value for that parameter alone
    (BFCL's type rules, string normalisation, list and dict rules). Calls are matched to expected
    calls one-to-one, same name only, by the matching with the most points; unmatched and extra
    calls, optional and unexpected arguments earn nothing and cost nothing. Score = points /
    total, except that an output the checker rejects is capped at (total - 1) / total and one it
    accepts scores 1.0: continuous is 1.0 exactly when discrete is. E.g. one call, 3 required
    arguments, one wrong: (1 + 2) / (1 + 3) = 0.75; a wrong name on a single-call item: 0.0.
    """
    if mode not in ("discrete", "continuous"):
        raise ValueError(f"bfcl_ast: mode must be discrete or continuous, not {mode!r}")
    meta = json.loads(metadata)
    truth, functions = json.loads(answer), meta["functions"]
    category = meta.get("category") or task.removeprefix("bfcl_")
    bfcl = _import_bfcl()

    def score(completion: str) -> float:
        calls = decode_calls(completion)
        if not calls:
            return 0.0
        valid = _verdict(bfcl.checker.ast_checker, functions, calls, truth, bfcl.python, category)
        if valid or mode == "discrete":
            return float(valid)
        earned, possible = partial_credit(functions, calls, truth)
        return min(earned, possible - 1) / possible

    return [score(c) for c in completions]


_VALUE = r"""(?:"[^"\n]*"|'[^'\n]*'|-?\d+(?:\.\d+)?|True|False|None|\[[^\[\]\n]*\]|\{[^{}\n]*\})"""


def call_regex(functions: list[dict[str, Any]]) -> str:
    """A regex of a call list over the documented functions, for constrained decoding.

    Function names and parameter names are the documented ones, values are Python literals
    (strings, numbers, booleans, None, flat lists and dicts), calls are joined by ", " and the
    list ends with "]" (the domain's prefill opens it). It fixes the format only: which function,
    which parameters and which values are still the policy's choice.
    """
    calls = []
    for doc in functions:
        params = "|".join(re.escape(p) for p in doc.get("parameters", {}).get("properties", {}))
        arg = rf"(?:{params})={_VALUE}" if params else None
        args = rf"(?:{arg}(?:, {arg})*)?" if arg else ""
        calls.append(rf"{re.escape(doc['name'])}\({args}\)")
    call = "(?:" + "|".join(calls) + ")"
    return rf"{call}(?:, {call})*\]"


class FunctionCallingDomain(DomainConfig):
    system_prompt: str = (
        "You are an expert in composing functions. Answer with the function call(s) only, in the "
        "format [func_name(param=value, ...)]."
    )
    """System message of function-calling prompts (the function docs are in the user message)."""
    assistant_prefill: str = "["
    """The call list starts with `[`: the format is learnable from the first token (no preamble to
    learn away), and `decode_calls` reads completions with or without it."""
    max_tokens: int = Field(64, gt=0)
    """Longest call list, in tokens."""
    stop: list[str] = ["\n"]
    """The call list is one line."""
    reward_mode: Literal["discrete", "continuous"] = "continuous"
    """Continuous: the share of expected function names and arguments matched; discrete: BFCL's
    AST checker's verdict."""
    constrained: bool = True
    """Decode calls under a regex of the documented function and parameter names: unconstrained,
    the embedded 135M model produced no parsable call in 96 tries on live_simple (docs/domains.md).
    Turn off to score free-form output as BFCL does."""


def _check_category(entry: TaskSpec) -> None:
    takes_no_params(entry)
    if entry.name not in CATEGORIES:
        why = next((f"BFCL category {entry.name!r} {w}" for w, c in _UNSUPPORTED.items()
                    if entry.name in c.split()), None)  # fmt: skip
        if why:
            raise ValueError(f"{why}; supported: {', '.join(CATEGORIES)}")
        raise ValueError(unknown_name("BFCL category", entry.name, CATEGORIES))


def _rows(entry: TaskSpec, seed: int) -> list[dict[str, str]]:
    return bfcl_rows(entry.name, limit=entry.size, seed=seed)


SPEC = register_domain(
    DomainSpec(
        name="function_calling",
        settings=FunctionCallingDomain,
        description="BFCL function calls checked by BFCL's AST checker.",
        sources=(TaskSource("bfcl", _rows, check=_check_category, needs_name=True),),
        rewards={"bfcl_ast": bfcl_reward},
        benchmarks=(
            Benchmark(
                "bfcl",
                lambda category, limit, seed: bfcl_rows(category, limit=limit, seed=seed),
                "bfcl:<category> (e.g. bfcl:simple_python)",
                takes_argument=True,
            ),
        ),
        default_benchmarks=("bfcl:simple_python", "bfcl:multiple", "bfcl:parallel"),
        answer_regex=lambda row: call_regex(json.loads(row["metadata"])["functions"]),
    )
)
