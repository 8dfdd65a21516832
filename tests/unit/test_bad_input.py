"""Bad input gives a clear error that names where and what, before anything is built or loaded:
dataset files and rows (metis_core/data/) and configs (metis_core/config*.py)."""

import json
import logging

import pytest
from pydantic import ValidationError

from metis_core.config import DataConfig, RunConfig, TaskSpec
from metis_core.config_loading import ConfigError, load_config
from metis_core.data import pool as pool_module
from metis_core.data.pool import DatasetError, build_pool

# --- dataset files and rows -----------------------------------------------------------------

GOOD = {"prompt": "What is 1 + 1?", "answer": "2"}


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ({"prompt": "What is 2 + 2?"}, r"row 1: `answer` must be a non-empty string or a number, got empty"),
        ({"prompt": "What is 2 + 2?", "answer": "  "}, r"row 1: `answer` .* got str '  '"),
        ({"prompt": "What is 2 + 2?", "answer": ["4"]}, r"row 1: `answer` .* got list \['4'\]"),
        ({"prompt": "What is 2 + 2?", "answer": {"x": 4}}, r"row 1: `answer` .* got dict"),
        ({"prompt": "What is 2 + 2?", "answer": True}, r"row 1: `answer` .* got bool True"),
        ({"prompt": "What is 2 + 2?", "answer": float("nan")}, r"row 1: `answer` .* got (empty|float nan)"),
        ({"answer": "4"}, r"row 1: `prompt` must be a non-empty string, got None"),
        ({"prompt": "   ", "answer": "4"}, r"row 1: `prompt` must be a non-empty string"),
        ({"prompt": 4, "answer": "4"}, r"row 1: `prompt` must be a non-empty string, got 4"),
        ({"prompt": "2 + 2?", "answer": "4", "task": ["t"]}, r"row 1: `task` must be a string"),
        ({"prompt": "2 + 2?", "answer": "4", "difficulty": 0.5}, r"row 1: `difficulty` must be a string"),
    ],
)  # fmt: skip
def test_a_bad_row_names_the_file_row_and_field(tmp_path, bad_row, message):
    file = write_jsonl(tmp_path / "pool.jsonl", [GOOD, bad_row])
    with pytest.raises(DatasetError, match=message) as err:
        build_pool(DataConfig(file=str(file)))
    assert str(file) in str(err.value)


def test_numbers_and_numbered_labels_are_accepted(tmp_path):
    file = write_jsonl(
        tmp_path / "pool.jsonl",
        [GOOD, {"prompt": "What is 2 + 2?", "answer": 4, "difficulty": 3}],
    )
    pool = build_pool(DataConfig(file=str(file)))
    assert sorted(pool["answer"]) == ["2", "4"] and sorted(pool["difficulty"]) == ["3", "default"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("pool.jsonl", b'{"prompt": "ok", "answer": "1"}\n{"prompt": "caf\xe9", "answer": "2"}\n',
         r"line 2: byte b'\\xe9' at column 16 is not UTF-8; save the file as UTF-8"),
        ("pool.csv", b"prompt,answer\nok,1\ncaf\xe9,2\n",
         r"line 3: byte b'\\xe9' at column 4 is not UTF-8"),
        ("pool.jsonl", b"", r"is empty; it needs rows with columns \['answer', 'prompt'\]"),
        ("pool.csv", b"prompt,answer\n", r"has no rows"),
        ("pool.jsonl", b'{"prompt": "ok", "answer": "1"}\n{not json\n',
         r"is unreadable: ArrowInvalid: JSON parse error.*row 1.*check that it is valid jsonl"),
        ("pool.csv", b"question,answer\nok,1\n", r"missing column\(s\) \['prompt'\]"),
    ],
)  # fmt: skip
def test_an_unusable_file_says_where_and_what_to_do(tmp_path, name, content, message):
    file = tmp_path / name
    file.write_bytes(content)
    with pytest.raises(DatasetError, match=message) as err:
        build_pool(DataConfig(file=str(file)))
    assert str(file) in str(err.value)


def test_a_code_file_that_is_not_utf8_names_the_task_and_line(tmp_path):
    file = tmp_path / "code.jsonl"
    file.write_bytes(
        b'{"prompt": "def f():\\n    \\"\\"\\"caf\xe9\\"\\"\\"", "tests": ["assert f()"]}\n'
    )
    spec = TaskSpec(source="code_file", name=str(file))
    with pytest.raises(DatasetError, match=r"data.tasks\[0\] \(code_file: .*line 1: .*not UTF-8"):
        build_pool(DataConfig(tasks=[spec]))


def test_too_long_prompts_are_left_out_and_counted(tmp_path, caplog):
    rows = [GOOD, {"prompt": "x " * 50, "answer": "1"}, {"prompt": "y " * 60, "answer": "1"}]
    file = write_jsonl(tmp_path / "pool.jsonl", rows)
    cfg = DataConfig(file=str(file), max_prompt_tokens=20)
    with caplog.at_level(logging.WARNING, logger="metis_core.data.pool"):
        pool = build_pool(cfg, count_tokens=lambda row: len(row["prompt"].split()))
    assert pool["prompt"] == [GOOD["prompt"]]
    assert "longer than data.max_prompt_tokens=20: file 2" in caplog.text

    with pytest.raises(
        DatasetError, match="all 3 prompts are longer than data.max_prompt_tokens=1"
    ):
        build_pool(cfg.model_copy(update={"max_prompt_tokens": 1}), lambda row: 10)


def test_a_row_scored_by_an_unknown_reward_fails_the_pool(monkeypatch):
    row = {"prompt": "p", "answer": "1", "task": "mine", "difficulty": "d", "metadata": "{}"}
    monkeypatch.setattr(
        pool_module, "_spec_rows", lambda spec, seed: [{**row, "domain": "math", "reward": "nope"}]
    )
    with pytest.raises(
        DatasetError, match=r"'mine' is scored by 'nope'.*registered: .*math_verify"
    ):
        build_pool(DataConfig(tasks=[TaskSpec(name="chain_sum", size=4)]))


# --- configs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rollout.topp=0.9", r"rollout.topp: unknown key"),
        ("data.tasks=[{name: chain_sum, size: 500, sizes: 3}]", r"data.tasks.0.sizes: unknown key"),
        ("rollout.top_p=0", r"rollout.top_p: Input should be greater than 0"),
        ("rollout.temperature=-1", r"rollout.temperature: Input should be greater than 0"),
        ("eval.temperature=0", r"eval.temperature: Input should be greater than 0"),
        ("data.heldout_fraction=1", r"data.heldout_fraction: Input should be less than 1"),
        ("data.heldout_fraction=-0.1", r"data.heldout_fraction: Input should be greater than 0"),
        ("data.tasks=[{name: chain_sum, size: -3}]", r"data.tasks.0.size: Input should be greater"),
        ("trainer.micro_batch_size=-4", r"trainer.micro_batch_size: Input should be greater"),
        ("curriculum.batch_prompts=0", r"curriculum.batch_prompts: Input should be greater"),
        ("model.max_model_len=-1", r"model.max_model_len: Input should be greater"),
        ("trainer.lr=.inf", r"trainer.lr: Input should be a finite number"),
        ("rollout.temperature=.nan", r"rollout.temperature: Input should be a finite number"),
        ("data.domain_weights={math: .nan}", r"data.domain_weights.math: Input should be a finite"),
        ("curriculum.mopps.decay=.inf", r"curriculum.mopps.decay: Input should be a finite"),
        ("data.domains.math.stop=['']", r"data.domains.math.stop: .*empty stop string"),
        ("curriculum.sampler=metiss", r"curriculum.sampler: Input should be 'metis', 'uniform'"),
        ("data.domain_weights={physics: 1}", r"data.domain_weights names 'physics'"),
        ("data.tasks=[{source: pypi, name: x}]", r"data.tasks.0.source: .*unknown source 'pypi'; registered: code, code_file, humaneval, bfcl, reasoning_gym"),
        ("data.domains.physics.max_tokens=8", r"data.domains: .*no domain named \['physics'\]; registered: code, function_calling, math"),
        ("data.domains.code.max_tokens=0", r"data.domains.code.max_tokens: Input should be greater than 0"),
    ],
)  # fmt: skip
def test_impossible_values_fail_at_load_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ("[{name: chain_summ, size: 500}]",
         r"data.tasks\[0\] \(reasoning_gym: chain_summ\): unknown reasoning-gym dataset "
         r"'chain_summ' \(did you mean chain_sum.*\); valid: .*basic_arithmetic, .*gcd"),
        ("[{name: chain_sum, size: 500, params: {max_term: 3}}]",
         r"'chain_sum' has no knob\(s\) \['max_term'\]; valid: allow_negation, max_digits, max_terms"),
        ("[{name: chain_sum, size: 500, params: {min_terms: 5, max_terms: 2}}]",
         r"'chain_sum' refuses params .*max_terms must be >= min_terms"),
        ("[{source: code, size: 500, params: {difficulty: 7}}]",
         r"\(code: -\): source 'code' needs params.difficulty, one of \[1, 2, 3\]; got 7"),
        ("[{source: code, size: 500}]", r"needs params.difficulty, one of \[1, 2, 3\]; got None"),
        ("[{source: code, size: 500, params: {difficulty: 1, level: 2}}]",
         r"no knob\(s\) \['level'\]; valid: difficulty"),
        ("[{source: bfcl, name: live_simpel}]",
         r"unknown BFCL category 'live_simpel' \(did you mean live_simple.*; valid: .*multiple"),
        ("[{source: bfcl, name: irrelevance}]", r"'irrelevance' has no ground-truth call; supported:"),
        ("[{source: bfcl, name: live_simple, params: {limit: 3}}]", r"takes no `params`"),
        ("[{source: humaneval, params: {difficulty: 2}}]", r"'humaneval' takes no `params`"),
    ],
)  # fmt: skip
def test_unknown_task_names_and_knobs_fail_at_load_with_the_valid_ones(tasks, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[f"data.tasks={tasks}", "curriculum.batch_prompts=1"])


def test_a_saved_config_with_an_unknown_task_fails_validation_too():
    # a run folder's config.json is read with RunConfig directly (resume, eval)
    saved = json.loads(RunConfig().to_json())
    saved["data"]["tasks"][0]["name"] = "no_such_dataset"
    with pytest.raises(ValidationError, match="unknown reasoning-gym dataset 'no_such_dataset'"):
        RunConfig.model_validate_json(json.dumps(saved))


def test_files_a_config_names_must_exist_at_load(tmp_path):
    missing = tmp_path / "nope.jsonl"
    for override, key in [
        (f"data.file={missing}", "data.file"),
        (f"data.tasks=[{{source: code_file, name: '{missing}'}}]", "data.tasks.0.name"),
        (f"trainer.deepspeed_config={missing}", "trainer.deepspeed_config"),
    ]:
        with pytest.raises(ConfigError, match=rf"{key}: no such file '{missing}'"):
            load_config(overrides=[override])
    not_json = tmp_path / "ds.json"
    not_json.write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"trainer.deepspeed_config: .* must hold a JSON object"):
        load_config(overrides=[f"trainer.deepspeed_config={not_json}"])
