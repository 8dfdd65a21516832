"""The comparison's arithmetic (targets, bootstrap intervals, the table) and its refusals."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from flows.cli import main
from metis_core.comparison import (
    ComparisonError,
    RunCurve,
    bootstrap_interval,
    check_plan,
    compare_table,
    default_target,
    run_summary,
    table_markdown,
)
from tests.conftest import REPO


def curve(sampler, seed, accuracy, tokens, zero_var=(0.5,)):
    n = len(accuracy)
    return RunCurve(
        sampler,
        seed,
        list(range(-1, n - 1)),
        list(accuracy),
        list(tokens),
        [t / 10 for t in tokens],
        [float(i) for i in range(n)],
        list(zero_var),
    )


def test_curves_come_from_the_steps_table_with_the_initial_evaluation_at_zero_spend():
    metrics = [
        (-1, {"eval/avg_at_4": 0.2, "cost/spent_tokens": 0.0}),
        (0, {"train/zero_variance_fraction": 0.5, "cost/spent_tokens": 100.0}),
        (1, {"train/zero_variance_fraction": 0.25, "cost/spent_tokens": 230.0,
             "eval/avg_at_4": 0.3, "cost/rollouts": 16.0, "cost/train_seconds": 9.0}),
    ]  # fmt: skip
    c = RunCurve.from_steps("uniform", 0, metrics, k=4)
    assert c.steps == [-1, 1] and c.accuracy == [0.2, 0.3]
    assert c.spent_tokens == [0.0, 230.0] and c.rollouts == [0.0, 16.0]
    assert c.zero_variance == [0.5, 0.25]


def test_tokens_to_target_is_the_spend_at_the_first_evaluation_reaching_it():
    c = curve("metis", 0, [0.2, 0.25, 0.31, 0.29], [0, 100, 200, 300])
    s = run_summary(c, 0.3)
    assert s["tokens_to_target"] == 200 and s["rollouts_to_target"] == 20
    assert s["best_accuracy"] == 0.31 and s["final_accuracy"] == 0.29
    assert math.isnan(run_summary(c, 0.5)["tokens_to_target"])


def test_default_target_is_uniforms_mean_best_and_needs_uniform():
    curves = [curve("uniform", 0, [0.2, 0.3], [0, 1]), curve("uniform", 1, [0.2, 0.4], [0, 1])]
    assert default_target(curves) == pytest.approx(0.35)
    with pytest.raises(ValueError, match="no finished 'uniform' run"):
        default_target([curve("metis", 0, [0.2], [0])])


def test_bootstrap_interval_brackets_the_mean_and_is_nan_for_one_seed():
    rng = np.random.default_rng(0)
    lo, hi = bootstrap_interval([1.0, 2.0, 3.0, 4.0], rng)
    assert 1.0 <= lo < 2.5 < hi <= 4.0
    assert all(math.isnan(x) for x in bootstrap_interval([1.0], rng))
    assert bootstrap_interval([2.0, 2.0, 2.0], rng) == (2.0, 2.0)


def test_table_counts_seeds_that_reach_the_target_and_prints_them():
    curves = [
        curve("uniform", 0, [0.2, 0.3], [0, 1000]),
        curve("uniform", 1, [0.2, 0.25], [0, 1000]),
        curve("metis", 0, [0.2, 0.35], [0, 500]),
        curve("metis", 1, [0.3, 0.3], [0, 500]),
    ]
    table = compare_table(curves, 0.3)
    assert table["uniform"]["reached"] == 1 and table["metis"]["reached"] == 2
    assert table["uniform"]["tokens_to_target"] == 1000
    assert table["metis"]["tokens_to_target"] == 250  # (500 + 0) / 2
    text = table_markdown(table, 0.3)
    assert "| metis | 2/2 |" in text and "| uniform | 1/2 |" in text


@pytest.mark.parametrize(
    ("samplers", "seeds", "target", "message"),
    [
        (["uniform", "greedy"], [0], None, "unknown sampler"),
        (["metis", "mopps"], [0], None, "add uniform"),
        (["uniform", "uniform"], [0], None, "each sampler once"),
        (["uniform"], [], None, "each seed once"),
    ],
)
def test_plan_refusals(samplers, seeds, target, message):
    with pytest.raises(ComparisonError, match=message):
        check_plan(samplers, seeds, target)
    check_plan(["metis", "mopps"], [0, 1], 0.4)  # a target makes uniform optional


def test_cli_rejects_a_bad_sampler_name_before_anything_loads(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "--samplers", "uniform", "greedy"])
    assert exit_.value.code == 2
    assert "invalid choice: 'greedy'" in capsys.readouterr().err
    assert main(["compare", "--samplers", "metis", "pcl"]) == 2
    assert "add uniform" in capsys.readouterr().err


def test_compare_sets_up_prefect_before_importing_it(tmp_path):
    """Prefect reads its settings once, when first imported: `metis compare` must set its
    environment (its home and stage caches under the comparison's folder, the temporary server's
    startup time) before it imports the flow, which imports Prefect. Here the flow is a stand-in
    that imports Prefect when the command imports from it, as the real module does, and
    reports the settings Prefect got."""
    stand_in = """
import sys, types
from metis_core import comparison

def compare(**kwargs):
    from prefect.settings import get_current_settings
    s = get_current_settings()
    print(s.home, s.server.ephemeral.startup_timeout_seconds)

def imported(name):  # what `from flows.compare import name` reaches: Prefect comes first
    if name.startswith("__"):  # (others look for __file__ and the like in every module)
        raise AttributeError(name)
    import prefect
    return compare if name == "compare" else getattr(comparison, name)

module = types.ModuleType("flows.compare")
module.__getattr__ = imported
sys.modules["flows.compare"] = module
from flows.cli import main
main(["compare", "--samplers", "uniform", "--seeds", "0", "--output", sys.argv[1]])
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    done = subprocess.run(
        [sys.executable, "-c", stand_in, str(tmp_path / "cmp")], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (reported,) = [
        line for line in done.stdout.splitlines() if line.endswith(" 180") or ".prefect" in line
    ]
    home, timeout = reported.split()
    assert home == str((tmp_path / "cmp" / ".prefect").resolve()) and timeout == "180"


def test_a_folder_of_another_comparison_is_refused_naming_what_differs(tmp_path):
    """A comparison folder is resumed only with its own config and target; the refusal names the
    settings that differ (such as the precision `auto` became on the machine that started it)."""
    from flows.compare import PLAN_FILE, plan
    from metis_core.config_loading import load_config
    from metis_core.run import write_json

    out = tmp_path / "comparison"
    out.mkdir()
    started = load_config(None, ["trainer.precision=fp32"]).model_dump(mode="json")
    write_json(out / PLAN_FILE, {"config": started, "target": None})
    here = ["trainer.precision=bf16"]
    with pytest.raises(ComparisonError, match=r"config \(model.dtype, trainer.precision differ\)"):
        plan.fn(None, here, ["uniform"], [0], None, str(out))
    with pytest.raises(ComparisonError, match=r"target \(None, not 0.5\)"):
        plan.fn(None, here, ["uniform"], [0], 0.5, str(out))
    assert os.listdir(out) == [PLAN_FILE]  # refused before anything was written
