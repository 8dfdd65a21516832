import ast
import atexit
import functools
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from metis_core.openmp import configure_openmp

configure_openmp()  # the OpenMP runtime `metis` runs on, before any test imports torch

REPO = Path(__file__).resolve().parents[1]
# When the suite started, in epoch seconds: infra/run_tests.sh sets METIS_TEST_STARTED once for both
# of its pytest runs (the serial tests, then the rest in parallel workers that start later).
SESSION_START = float(os.environ.get("METIS_TEST_STARTED") or time.time())


def _tier(item: pytest.Item) -> int:
    """0 unit, 1 integration, 2 slow: the order the suite runs in, cheapest and broadest first."""
    if item.get_closest_marker("slow"):
        return 2
    return 1 if item.get_closest_marker("integration") else 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Unit tests first, then integration, then slow; a module keeps its tests together (its
    fixtures are built once) at the tier of its slowest test."""
    module_tier: dict[str, int] = {}
    for item in items:
        module_tier[item.module.__name__] = max(
            module_tier.get(item.module.__name__, 0), _tier(item)
        )
    items.sort(key=lambda item: module_tier[item.module.__name__])


def require_alone(why: str) -> None:
    """Fail a machine-wide check running beside other tests (in a pytest-xdist worker): what it
    sees may be theirs. Such tests are marked `serial`; infra/run_tests.sh runs them alone first."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        pytest.fail(
            f"this test {why}, so it cannot run beside other tests (it is in pytest-xdist worker "
            f"{worker}): mark its module `serial` and run the serial tests without -n, as "
            "infra/run_tests.sh does"
        )


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A `serial` test fails in a parallel worker (require_alone). METIS_TEST_BUDGET_MIN: once the
    suite has run that many minutes, slow tests not yet started are skipped, saying so (CI sets it:
    a machine much slower than ours must still finish within CI's limit; unit and integration tests
    always run)."""
    if item.get_closest_marker("serial"):
        require_alone("checks state the whole machine shares (marked serial)")
    budget = os.environ.get("METIS_TEST_BUDGET_MIN")
    if budget and item.get_closest_marker("slow"):
        spent = (time.time() - SESSION_START) / 60
        if spent > float(budget):
            pytest.skip(
                f"the suite's time budget is spent ({spent:.0f} of METIS_TEST_BUDGET_MIN={budget} "
                "minutes): run the slow tier alone with METIS_TEST_MARKERS=slow"
            )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random-initialised Llama with the SmolLM2 tokenizer (built once per session)."""
    from metis_core.model.weights import embedded_tokenizer, make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama", embedded_tokenizer())


@functools.cache
def migrated_prefect_database() -> Path:
    """A Prefect database with every migration applied, made once per session. Copied into a new
    PREFECT_HOME, it lets that home's temporary server start in about 6 s instead of 11 (the
    migrations, on 2 cores). The first start on an empty home is still what `metis train` does
    for a user; bench/kill_harness.py's runs (test_resume) start that way."""
    home = Path(tempfile.mkdtemp(prefix="metis-prefect-db-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    prefect = Path(sys.executable).parent / "prefect"
    subprocess.run(
        [str(prefect), "server", "database", "upgrade", "-y"],
        env=env, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return home / "prefect.db"


def metis_env(tmp: Path) -> dict[str, str]:
    """Environment for a `metis` subprocess that keeps Prefect, MLflow and caches inside tmp."""
    env = dict(os.environ)
    home = tmp / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "prefect.db").exists():
        shutil.copyfile(migrated_prefect_database(), home / "prefect.db")
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
        # fp32 on both sides, whatever the hardware: these runs check the engine and the trainer
        # agree to 1e-3 (the default, auto, is bf16 on bf16 hardware: test_precision.py, and the
        # kill harness's runs in test_resume.py)
        "model.dtype=float32",
        "trainer.precision=fp32",
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


def port_mismatches(cls: type, port: type) -> list[str]:
    """How `cls` fails to satisfy the Protocol `port` (metis_core/ports.py), by inspection, without
    making one (so no vLLM or DeepSpeed starts): each of the port's attributes must be a class
    attribute or be assigned as `self.<name>` in the class's code; each method must exist and take
    the port's arguments the way the port passes them (position, name, default), and require no
    other. runtime_checkable protocols would compare names only, and only on an instance."""
    problems = []
    attributes = [n for n in getattr(port, "__annotations__", {}) if not n.startswith("_")]
    assigned = set()  # annotated in the class body, or assigned to `self.<name>` in its code
    for klass in cls.__mro__[:-1]:
        assigned |= set(getattr(klass, "__annotations__", {}))
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        assigned |= {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and getattr(node.value, "id", "") == "self"
        }
    for name in attributes:
        if not hasattr(cls, name) and name not in assigned:
            problems.append(f"{cls.__name__} has no attribute {name}")
    methods = [n for n, v in vars(port).items() if inspect.isfunction(v) and not n.startswith("_")]
    for name in methods:
        impl = getattr(cls, name, None)
        if not callable(impl):
            problems.append(f"{cls.__name__} has no method {name}")
            continue
        wanted = list(inspect.signature(getattr(port, name)).parameters.values())[1:]
        given = list(inspect.signature(impl).parameters.values())[1:]
        problems += [f"{cls.__name__}.{name}: {p}" for p in _signature_gaps(wanted, given)]
    return problems


def _signature_gaps(wanted: list, given: list) -> list[str]:
    """Why a method with parameters `given` cannot be called as the port's `wanted` are passed."""
    P = inspect.Parameter
    by_name = {p.name: p for p in given}
    varargs = any(p.kind is P.VAR_POSITIONAL for p in given)
    varkw = any(p.kind is P.VAR_KEYWORD for p in given)
    positional = [p for p in given if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    gaps, used = [], set()
    for i, w in enumerate(wanted):
        if w.kind in (P.VAR_POSITIONAL, P.VAR_KEYWORD):
            continue
        if w.kind is P.POSITIONAL_ONLY:
            match = positional[i] if i < len(positional) else None
            if match is None and not varargs:
                gaps.append(f"takes no positional argument {i} ({w.name})")
        else:
            match = by_name.get(w.name)
            if match is not None and match.kind is P.POSITIONAL_ONLY:
                match = None
            moved = i >= len(positional) or positional[i].name != w.name
            if w.kind is P.POSITIONAL_OR_KEYWORD and match is not None and moved:
                gaps.append(f"takes {w.name} at another position")
            if match is None and not varkw:
                gaps.append(f"takes no argument {w.name!r}")
        if match is not None:
            used.add(match.name)
            if w.default is not P.empty and match.default is P.empty:
                gaps.append(f"requires {match.name}, which the port leaves out")
    required = [
        g for g in given if g.default is P.empty and g.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD)
    ]
    gaps += [
        f"requires {g.name}, which the port never passes" for g in required if g.name not in used
    ]
    return gaps


@pytest.fixture
def toy_domain():
    """Loads tests/toy_domain.py (the `reverse` domain) as a config would, and forgets it after
    the test, so the other tests see only the built-in domains."""
    from metis_core.domains import unregister_domain

    yield "tests.toy_domain"
    unregister_domain("reverse")
    sys.modules.pop("tests.toy_domain", None)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS's pick)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not alive(pid)
