import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random-initialised Llama with the SmolLM2 tokenizer (built once per session)."""
    from metis_core.model.weights import embedded_tokenizer, make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama", embedded_tokenizer())


def metis_env(tmp: Path) -> dict[str, str]:
    """Environment for a `metis` subprocess that keeps Prefect, MLflow and caches inside tmp."""
    env = dict(os.environ)
    home = tmp / "prefect"
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_LOCAL_STORAGE_PATH=str(home / "storage"),
        PREFECT_MEMO_STORE_PATH=str(home / "memo_store.toml"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONUNBUFFERED="1",
    )
    env.pop("PREFECT_API_URL", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def metis_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *args]


def run_metis(tmp: Path, args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    """`metis ARGS` in a subprocess with tmp-local Prefect state; fails the test on a non-zero exit."""
    done = subprocess.run(
        metis_command(*args),
        cwd=REPO,
        env=metis_env(tmp),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def start_metis(tmp: Path, args: list[str], log: Path) -> subprocess.Popen:
    """`metis ARGS` in the background, in its own process group (so `kill_group` takes its
    temporary Prefect server with it), output to `log`."""
    return subprocess.Popen(
        metis_command(*args),
        cwd=REPO,
        env=metis_env(tmp),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the whole process group, like a preemption."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def set_args(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def only_run_dir(output_dir: Path) -> Path:
    (run_dir,) = [p for p in output_dir.iterdir() if (p / "config.json").is_file()]
    return run_dir


def mlflow_run(run_dir: Path):
    """(MlflowClient, MLflow run id) of a metis run folder."""
    from mlflow.tracking import MlflowClient

    info = json.loads((run_dir / "run.json").read_text())
    return MlflowClient(tracking_uri=info["tracking_uri"]), info["mlflow_run_id"]


# The integration tier's tiny run: B prompts x N rollouts out of M*B candidates.
B, N, M = 2, 4, 3


def tiny_overrides(model, out, steps=2, extra=()):
    return [
        f"model.path={model}",
        "model.dtype=float32",
        f"steps={steps}",
        f"output_dir={out}",
        f"curriculum.batch_prompts={B}",
        f"curriculum.pool_multiplier={M}",
        f"rollout.n={N}",
        "eval.every=1",
        "eval.max_prompts=4",
        "eval.samples=2",
        "trainer.micro_batch_size=4",
        "trainer.lr=1e-3",
        "checkpoint_every=1",
        "judge.lam=0.5",
        "rollout.top_p=0.8",  # the trainer must cut the same nucleus, or the gap check stops it
        "eval.audit_prompts=6",
        # the paper's memory and scores here; the defaults (retrieved, expected) in test_mixed_flow
        "judge.memory=recent",
        "judge.scoring=sampled",
        *extra,
    ]


@pytest.fixture
def toy_domain():
    """Loads tests/toy_domain.py (the `reverse` domain) as a config would, and forgets it after
    the test, so the other tests see only the built-in domains."""
    from metis_core.domains import unregister_domain

    yield "tests.toy_domain"
    unregister_domain("reverse")
    sys.modules.pop("tests.toy_domain", None)
