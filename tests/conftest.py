import os
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
