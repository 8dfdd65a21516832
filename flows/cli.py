"""`metis`: the command line. Sets up Prefect's and the libraries' environment before importing them."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from flows.cli_arguments import parser
from flows.process import exit_quickly, prefect_environment, start_temporary_server

if TYPE_CHECKING:
    from collections.abc import Callable

    from metis_core.config import RunConfig
    from metis_core.trainer_config import TrainerConfig


def _services(args: argparse.Namespace) -> int:
    from flows import services

    if args.action == "up":
        try:
            services.up(
                args.output_dir, args.host, args.prefect_port, args.mlflow_port, args.database
            )
        except (services.ServiceError, subprocess.CalledProcessError) as err:
            print(f"metis: {err}", file=sys.stderr)
            return 1
    elif args.action == "down":
        stopped = services.down(args.output_dir)
        print(f"metis: stopped {', '.join(stopped) or 'nothing (no services were up)'}")
        return 0
    found = services.status(args.output_dir)
    for name, state in found.items():
        print(f"{name:8s} {state}")
    env = services.service_environment(args.output_dir)
    for key, value in env.items():
        print(f"export {key}={value}")
    return 0 if len(env) == len(found) else 3


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)  # (the OpenMP runtime was chosen on importing `flows`)
    if args.command == "services":
        return _services(args)
    from metis_core.config_loading import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"metis: {err}", file=sys.stderr)
        return 2
    if getattr(args, "resume", None) and (args.config or args.overrides):
        print(
            "metis: --resume continues with the run's saved config (RUN_DIR/config.json); drop --config/--set",
            file=sys.stderr,
        )
        return 2
    if args.command == "trainer-node":
        return _trainer_node(args.node_rank, cfg.trainer)
    if args.command == "config":
        from metis_core.config_loading import config_reference

        print(config_reference() if args.reference else cfg.to_json())
        return 0
    if args.command in ("train", "compare") and not getattr(args, "resume", None):
        from metis_core.launch import check_sandbox
        from metis_core.sandbox import SandboxUnavailable

        try:
            check_sandbox(cfg)
        except SandboxUnavailable as err:
            print(f"metis: {err}", file=sys.stderr)
            return 2
    if args.command == "compare":
        return _compare(args, cfg)
    if args.command == "eval" and (problem := _eval_arguments_problem(args)):
        print(f"metis: {problem}", file=sys.stderr)  # before any server or library starts
        return 2
    resume = getattr(args, "resume", None)
    if resume:  # the run's own config decides what to import early (its engine's placement)
        cfg = _saved_config(Path(resume), cfg)
    # a resumed run's services and temporary Prefect server are those of the folder it is in
    home = str(Path(resume).resolve().parent) if resume else cfg.output_dir
    from flows.services import service_environment

    for key, value in service_environment(home).items():  # `metis services up`
        os.environ.setdefault(key, value)
    prefect_environment(home)
    server_ready = start_temporary_server()  # (flows/process.py) beside the imports below
    if args.command == "eval":
        return _eval(args, cfg, server_ready)
    from flows.train import Preempted, train
    from metis_core.checkpoints import CheckpointError

    _ready_to_run(cfg, server_ready)
    try:
        run_dir = train(
            config_file=args.config,
            overrides=args.overrides,
            resume=args.resume,
            run_id=args.run_id,
        )
    except ConfigError as err:  # e.g. --run-id of a run started with another config
        print(f"metis: {err}", file=sys.stderr)
        return 2
    except Preempted as err:
        print(f"metis: {err}", file=sys.stderr)
        return 143  # 128 + SIGTERM, as if the signal had ended it
    except CheckpointError as err:  # e.g. a full disk: what to do is in the message
        print(f"metis: {err}", file=sys.stderr)
        return 1
    print(f"metis: run finished: {run_dir}")
    return 0


def _saved_config(run_dir: Path, cfg: RunConfig) -> RunConfig:
    """The config a run was started with (RUN_DIR/config.json), or `cfg` where there is none to
    read: `train` then says what is wrong with the folder."""
    from pydantic import ValidationError

    from metis_core.config import saved_run_config

    try:
        return saved_run_config(run_dir)
    except (OSError, ValidationError):
        return cfg


def _ready_to_run(cfg: RunConfig, server_ready: Callable[[], None]) -> None:
    """Import what the command's flows load while Prefect's temporary server starts (started by
    `start_temporary_server`), then wait until it answers."""
    from metis_core.launch import import_run_libraries

    import_run_libraries(cfg)
    server_ready()


def _compare(args: argparse.Namespace, cfg: RunConfig) -> int:
    from metis_core.comparison import ComparisonError, check_plan

    try:
        check_plan(args.samplers, args.seeds, args.target)
    except ComparisonError as err:
        print(f"metis: {err}", file=sys.stderr)
        return 2
    out = args.output or str(Path(cfg.output_dir) / f"compare-{cfg.name}")
    # before anything imports Prefect, which reads its settings once, at import: its stage
    # caches and temporary server live with the comparison it resumes
    prefect_environment(out)
    server_ready = start_temporary_server()
    from flows.compare import compare

    _ready_to_run(cfg, server_ready)
    compare(
        config_file=args.config,
        overrides=args.overrides,
        samplers=args.samplers,
        seeds=args.seeds,
        target=args.target,
        output=out,
    )
    print(f"metis: comparison finished: {out}")
    return 0


def _trainer_node(node_rank: int, trainer: TrainerConfig) -> int:
    from metis_core.trainer.nodes import NodeError, start_node

    try:
        start_node(trainer, node_rank)  # becomes torchrun
    except NodeError as err:
        print(f"metis: {err}", file=sys.stderr)
    return 2


def _eval_arguments_problem(args: argparse.Namespace) -> str | None:
    from metis_core.evaluation import EvalError, check_benchmark_names

    if args.samples < 1:
        return "--samples must be >= 1"
    try:
        check_benchmark_names(args.benchmarks or [])
    except EvalError as err:
        return str(err)
    return None


def _eval(args: argparse.Namespace, cfg: RunConfig, server_ready: Callable[[], None]) -> int:
    from flows.evaluate import evaluate
    from metis_core.evaluation import EvalError

    _ready_to_run(cfg, server_ready)
    try:
        out = evaluate(
            checkpoint=args.checkpoint,
            mlflow_run=args.mlflow_run,
            benchmarks=args.benchmarks,
            samples=args.samples,
            max_prompts=args.max_prompts or None,
            temperature=args.temperature,
            config_file=args.config,
            overrides=args.overrides,
            output_dir=args.output_dir,
        )
    except EvalError as err:
        print(f"metis: {err}", file=sys.stderr)
        return 2
    print(f"metis: results in {out}")
    return 0


def command() -> None:
    """The `metis` command: `main`, then `exit_quickly`."""
    exit_quickly(main())


if __name__ == "__main__":
    command()
