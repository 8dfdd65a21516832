"""`metis`'s arguments: its subcommands, their options and the help they print (flows/cli.py
acts on them)."""

from __future__ import annotations

import argparse

EPILOG = """
examples:
  metis train                                   # the CPU default (same as --config configs/default.yaml)
  metis train --config configs/default.yaml --set curriculum.batch_prompts=4 --set steps=5
  metis train --set curriculum.sampler=uniform  # the plain-GRPO baseline on equal footing
  metis train --resume runs/metis-default-20261121-220000-1a2b   # continue after a crash/preemption
  metis train --run-id nightly-a    # rerun the same command after a kill: it continues
  metis config --set judge.lam=0                # print the resolved config and exit
  metis train --config configs/mixed.yaml       # math + code + function calling in one pool
  metis eval --checkpoint embedded:smollm2-135m-instruct          # the untrained default model
  metis eval --checkpoint runs/<run id> --benchmarks humaneval bfcl:simple_python heldout
  metis eval --mlflow-run <MLflow run id> --samples 8             # a training run's latest checkpoint
  metis eval --checkpoint models:/<run id>@best --benchmarks heldout   # its best registered version
  metis services up                             # a Prefect and an MLflow server for every run after
  metis trainer-node --config run.yaml --node-rank 1   # node 1's ranks of a run with trainer.nodes=2
  metis compare --config configs/compare.yaml --samplers uniform metis mopps dapo_dynamic --seeds 0 1 2

Runs go to runs/<run id>/ (history.duckdb, checkpoints/, steps/). Metrics go to MLflow
(default sqlite:///runs/mlflow.db; browse with `mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`).
Prefect: a temporary local server unless PREFECT_API_URL names one or `metis services up` runs.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="metis",
        description="Reinforcement fine-tuning with a self-judged curriculum (METIS, arXiv 2605.11235).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("train", "run (or resume) a training run as the Prefect flow metis-train"),
        ("eval", "evaluate a checkpoint on benchmarks as the Prefect flow metis-eval"),
        ("config", "validate and print the resolved config"),
        (
            "compare",
            "train several samplers x seeds on one config and compare them (metis-compare)",
        ),
        (
            "trainer-node",
            "start this machine's ranks of a run's trainer over several nodes (trainer.nodes)",
        ),
    ):
        s = sub.add_parser(
            name,
            help=help_text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=EPILOG,
        )
        s.add_argument(
            "--config",
            default=None,
            help="YAML config file; only what differs from the defaults (docs/configs.md)",
        )
        s.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override one field, e.g. --set judge.lam=0.01 (repeatable)",
        )
        if name == "config":
            s.add_argument(
                "--reference",
                action="store_true",
                help="print the markdown reference of every field (docs/configs.md)",
            )
        if name == "eval":
            _eval_arguments(s)
        if name == "compare":
            _compare_arguments(s)
        if name == "trainer-node":
            s.add_argument(
                "--node-rank",
                type=int,
                required=True,
                metavar="I",
                help="this node's index, 1 to trainer.nodes - 1 (node 0 is the run's machine); "
                "give the run's --config/--set: the ranks wait for node 0 at trainer.rendezvous",
            )
        if name == "train":
            s.add_argument(
                "--resume",
                default=None,
                metavar="RUN_DIR",
                help="continue the run in RUN_DIR from its latest complete checkpoint",
            )
            s.add_argument(
                "--run-id",
                default=None,
                metavar="NAME",
                help="name the run (its folder under output_dir): rerunning the same command "
                "after a crash or preemption continues it, and a finished one is not rerun "
                "(default: <name>-<start time>-<flow run>)",
            )
    _services_parser(sub)
    return p


SERVICES_HELP = """
Start, stop or show a Prefect server and an MLflow tracking server on this machine (127.0.0.1),
with their logs, PIDs and Prefect's database under <output-dir>/services/. While they answer,
`metis train`, `eval` and `compare` record to them (PREFECT_API_URL, MLFLOW_TRACKING_URI, unless
already set); when they are down, to the embedded default (a temporary Prefect server, the sqlite
MLflow store, which the MLflow server also serves).
"""


def _services_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    s = sub.add_parser(
        "services",
        help="start/stop/show a Prefect server and an MLflow server (metis services up)",
        description=SERVICES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("action", choices=["up", "down", "status"])
    s.add_argument("--output-dir", default="runs", help="where runs and services live (runs)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    s.add_argument("--prefect-port", type=int, default=4200, help="(4200; a free one if taken)")
    s.add_argument("--mlflow-port", type=int, default=5000, help="(5000; a free one if taken)")
    s.add_argument(
        "--database",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="Prefect's database: SQLite (default) or a PostgreSQL cluster started here",
    )


COMPARE_HELP = """
Every sampler is trained with every seed on the same config, initial weights, pool and held-out
split, each as a child flow run (Prefect) and a child run (MLflow) of the comparison. The table
(comparison.md / .json in the comparison folder, and the parent MLflow run) gives per sampler,
as a mean over seeds with a 95% bootstrap interval: generated tokens (rollouts, discarded
rollouts, judgments), rollouts and training seconds to reach the target held-out accuracy, best
and final accuracy, zero-variance share; comparison.png plots accuracy against tokens and
seconds. Rerun the same command after a kill: finished runs are kept, unfinished ones resume.
"""


def _compare_arguments(s: argparse.ArgumentParser) -> None:
    from metis_core.samplers import SAMPLERS

    s.description = COMPARE_HELP
    s.add_argument(
        "--samplers",
        nargs="+",
        default=["uniform", "metis"],
        choices=sorted(SAMPLERS),
        metavar="SAMPLER",
        help=f"samplers to compare, any of: {', '.join(sorted(SAMPLERS))} (default: uniform metis)",
    )
    s.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0, 1, 2],
        help="seeds of each sampler (default 0 1 2)",
    )
    s.add_argument(
        "--target",
        type=float,
        default=None,
        help="held-out accuracy to reach (default: uniform's best, mean over its seeds)",
    )
    s.add_argument(
        "--output",
        default=None,
        help="comparison folder (default <output_dir>/compare-<name>; the same folder resumes)",
    )


def _eval_arguments(s: argparse.ArgumentParser) -> None:
    from metis_core.domains import benchmark_help
    from metis_core.evaluation import default_benchmarks

    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--checkpoint",
        help="an HF model folder, a run folder (its latest checkpoint), a registered model "
        "version (models:/<run id>@best, /latest or /<version>), or "
        "embedded:smollm2-135m-instruct (the untrained default)",
    )
    which.add_argument(
        "--mlflow-run", help="MLflow run id of a training run: evaluate its latest checkpoint"
    )
    s.add_argument(
        "--benchmarks",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"any of: {benchmark_help()} (default: {' '.join(default_benchmarks())})",
    )
    s.add_argument("--samples", type=int, default=4, help="k completions per prompt (default 4)")
    s.add_argument(
        "--max-prompts",
        type=int,
        default=40,
        help="a seeded subset of each benchmark (default 40; 0 = all)",
    )
    s.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    s.add_argument(
        "--output-dir", default=None, help="results folder (default: <run>/evals or runs/evals)"
    )
