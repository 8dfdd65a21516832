"""Opening a run: a new one from a config, or a resumed one from its folder's latest checkpoint."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

from datasets import Dataset

from metis_core import checkpoints
from metis_core.algorithms import MovingAverageBaseline
from metis_core.config import RunConfig, saved_run_config
from metis_core.config_loading import ConfigError, describe_changes, flat_params
from metis_core.data.pool import DatasetError, build_pool
from metis_core.model.weights import configure_runtime_environment, resolve_model
from metis_core.run import Run, new_sampler, read_json, task_prompt_ids, write_json
from metis_core.store.outcomes import OutcomeStore
from metis_core.tracking.mlflow_tracker import Tracker, tracking_uri_for
from metis_core.tracking.registry import log_datasets

log = logging.getLogger(__name__)


def import_run_libraries(cfg: RunConfig) -> None:
    """Import what a run loads first (transformers, MLflow, and vLLM where the engine shares
    this process), each after its variables are set. `metis train`, `eval` and `compare` call
    this while Prefect's temporary server starts on the other core (flows/process.py), so that
    these 10-13 s of imports (2 cores) overlap its start instead of following it."""
    configure_runtime_environment()
    import transformers  # noqa: F401

    from metis_core.tracking.mlflow_tracker import mlflow_environment

    mlflow_environment()
    import mlflow.tracking  # noqa: F401

    if cfg.model.engine == "in_process":
        from metis_core.engine.vllm_engine import import_vllm

        import_vllm()


def new_run_id(cfg: RunConfig) -> str:
    return f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def build_run_pool(cfg: RunConfig) -> Dataset:
    """The pool as a training run builds it: prompts longer than data.max_prompt_tokens (chat-
    formatted, by the model's tokenizer) left out. The same config gives the same pool."""
    from transformers import AutoTokenizer

    configure_runtime_environment()
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model(cfg.model.path)))
    return build_pool(cfg.data, lambda row: len(task_prompt_ids(cfg, tokenizer, row)))


def prepare_run_dir(cfg: RunConfig, run_id: str | None = None) -> Path:
    """Create the run folder with its resolved config and pool; return it. Loads only the
    tokenizer (to leave out prompts longer than data.max_prompt_tokens); a bad pool raises
    before any folder is made."""
    run_id = run_id or new_run_id(cfg)
    run_dir = Path(cfg.output_dir) / run_id
    if (run_dir / "config.json").is_file():  # written last: the folder is complete
        return run_dir
    pool = build_run_pool(cfg)
    train = sum(split == "train" for split in pool["split"])
    needed = cfg.curriculum.batch_prompts * cfg.curriculum.pool_multiplier
    if train < needed:
        raise DatasetError(
            f"the training split has {train} prompts, fewer than the m*B = {needed} candidates "
            "an iteration draws; add data.tasks or lower curriculum.pool_multiplier"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    pool.to_parquet(str(run_dir / "pool.parquet.tmp"))
    (run_dir / "pool.parquet.tmp").replace(run_dir / "pool.parquet")
    (run_dir / "config.json.tmp").write_text(cfg.to_json())
    (run_dir / "config.json.tmp").replace(run_dir / "config.json")
    return run_dir


def named_run_dir(cfg: RunConfig, run_id: str) -> Path:
    """The folder of run `run_id` under cfg.output_dir: created when new; when it exists, it must
    have been started with this same config (rerunning the command that started it continues it).
    """
    saved = Path(cfg.output_dir) / run_id / "config.json"
    if saved.is_file():
        changed = describe_changes(saved_run_config(saved.parent), cfg)
        if changed:
            raise ConfigError(
                f"run {run_id!r} exists with another config ({changed}); "
                f"continue it with `metis train --resume {saved.parent}` (its own config) or "
                "choose another --run-id"
            )
    return prepare_run_dir(cfg, run_id)


def mark_finished(run_dir: Path) -> None:
    """Record in run.json that the run completed all its steps."""
    info = read_json(run_dir / "run.json")
    write_json(run_dir / "run.json", info | {"finished": True})


def is_finished(run_dir: Path) -> bool:
    info = run_dir / "run.json"
    return info.is_file() and bool(read_json(info).get("finished"))


def run_tracker(cfg: RunConfig, recorded_uri: str | None) -> Tracker:
    """The MLflow tracker of a run of `cfg` whose run.json recorded `recorded_uri` (None for a
    new run): the same store and experiment every time the run's folder is opened."""
    uri = tracking_uri_for(cfg, recorded_uri)
    return Tracker(uri, cfg.experiment, Path(cfg.output_dir) / "mlartifacts")


def close_finished_run(run_dir: Path) -> None:
    """A finished run's MLflow run ends FINISHED if it is still RUNNING: MLflow was unreachable
    as the run ended (or an older metis, which marked run.json finished first, was killed in
    between), and no later command would end it. Called where a finished run is found and not
    rerun; a run MLflow has ended is left as it is."""
    info = read_json(run_dir / "run.json")
    if not info.get("mlflow_run_id"):
        return
    cfg = saved_run_config(run_dir)
    try:
        tracker = run_tracker(cfg, info.get("tracking_uri"))
        running = tracker.client.get_run(info["mlflow_run_id"]).info.status == "RUNNING"
    except Exception as err:  # an MLflow server that is down must not fail a finished run
        log.warning("could not check %s's MLflow run: %s", run_dir.name, err)
        return
    if running:
        log.warning("%s finished, but its MLflow run was left RUNNING; ending it", run_dir.name)
        tracker.attach(info["mlflow_run_id"])
        tracker.end("FINISHED")


def check_sandbox(cfg: RunConfig) -> None:
    """Raise SandboxUnavailable (saying what to do) when the config grades model-written code
    and this machine has no namespace sandbox for it; before anything starts."""
    from metis_core.domains import domain_spec

    if any(domain_spec(name).needs_sandbox for name in cfg.domains_in_use()):
        from metis_core.sandbox import isolation

        isolation()


def open_run(run_dir: Path) -> Run:
    """Load every live part of the run in `run_dir`; resume from its latest checkpoint if any."""
    configure_runtime_environment()
    cfg = saved_run_config(run_dir)
    check_sandbox(cfg)
    run_id = run_dir.name
    pool = Dataset.from_parquet(str(run_dir / "pool.parquet"))
    info_file = run_dir / "run.json"
    info = read_json(info_file) if info_file.is_file() else {}

    tracker = run_tracker(cfg, info.get("tracking_uri"))
    tracking_uri = tracker.tracking_uri
    if "incarnation" not in info:  # names this folder's MLflow run before it exists
        info["incarnation"] = uuid.uuid4().hex
        write_json(info_file, info)
    tags = {"metis.run_dir": str(run_dir.resolve()), "metis.incarnation": info["incarnation"]}
    if "parent_mlflow_run_id" in info:  # a run of a comparison (flows/compare.py)
        tags["mlflow.parentRunId"] = info["parent_mlflow_run_id"]
    # a kill between creating the MLflow run and writing its id leaves it findable by its tag
    known = info.get("mlflow_run_id") or tracker.find("metis.incarnation", info["incarnation"])
    mlflow_run_id = tracker.start(run_id, known, tags=tags, system_metrics=cfg.system_metrics)
    if "mlflow_run_id" not in info:
        tracker.log_params(flat_params(cfg))
        tracker.log_dict(cfg.model_dump(mode="json"), "config.json")
        log_datasets(tracker, pool, str((run_dir / "pool.parquet").resolve()))
        info |= {"run_id": run_id, "mlflow_run_id": mlflow_run_id, "tracking_uri": tracking_uri}
        write_json(info_file, info)

    try:
        return _start_parts(cfg, run_id, run_dir, pool, tracker)
    except BaseException:  # nothing started: the MLflow run must not stay RUNNING forever
        tracker.end("FAILED")
        raise


def _start_parts(
    cfg: RunConfig, run_id: str, run_dir: Path, pool: Dataset, tracker: Tracker
) -> Run:
    """The engine, trainer, store and sampler of an open run, restored from its latest
    checkpoint if it has one."""
    from metis_core.engine import open_engine
    from metis_core.trainer import open_trainer

    store = OutcomeStore(run_dir / "history.duckdb")  # first: a locked history fails in seconds
    model_dir = resolve_model(cfg.model.path)
    engine = open_engine(
        cfg.model.engine, model_dir, cfg.model.dtype, cfg.model.max_model_len, cfg.seed
    )
    sampler = new_sampler(cfg)
    trainer = open_trainer(
        model_dir,
        cfg.trainer,
        max_response_tokens=max(cfg.domain(d).max_tokens for d in cfg.domains_in_use()),
        engine_dtype=cfg.model.dtype,
    )
    run = Run(
        cfg=cfg,
        run_id=run_id,
        run_dir=run_dir,
        model_dir=model_dir,
        pool=pool,
        engine=engine,
        trainer=trainer,
        store=store,
        tracker=tracker,
        sampler=sampler,
        baseline=MovingAverageBaseline(cfg.judge.baseline_momentum),
    )

    def load(checkpoint: checkpoints.Checkpoint) -> None:
        run.load_client_state(trainer.load_checkpoint(run.checkpoint_dir, checkpoint.tag))

    restored = checkpoints.restore(run.checkpoint_dir, load)
    if restored is not None:
        # what the sync after the restored step sent
        engine.load_weights(trainer.engine_weights(cfg.model.dtype, run.start_step - 1))
        log.info(
            "resumed %s from checkpoint %s: continuing at step %d",
            run_id,
            restored.tag,
            run.start_step,
        )
    return run
