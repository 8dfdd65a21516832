"""The default MLflow store (a SQLite file under the output folder) is created whole or not at
all: a process killed while MLflow builds it must not leave a file that no later run can open."""

import os
import signal
import subprocess
import sys
import textwrap
import time

from metis_core.tracking.mlflow_tracker import Tracker, create_sqlite_store

KILLED_MID_MIGRATION = textwrap.dedent(
    """
    import os, signal, sys
    from alembic.operations import Operations

    create_table = Operations.create_table

    def killed_after_it(self, *args, **kwargs):  # one table of a migration made, then SIGKILL
        create_table(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    Operations.create_table = killed_after_it
    from metis_core.tracking.mlflow_tracker import Tracker
    Tracker(sys.argv[1], "metis", sys.argv[2])
    """
)


def test_a_run_killed_while_mlflow_builds_its_store_leaves_none_behind(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_MID_MIGRATION, uri, str(tmp_path / "mlartifacts")],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    half_built = (tmp_path / "mlflow.db").exists()
    # the next start builds the store and logs into it
    tracker = Tracker(uri, "metis", tmp_path / "mlartifacts")
    assert tracker.client.get_experiment_by_name("metis") is not None
    assert not half_built


def test_a_new_store_opens_and_what_a_killed_build_left_is_cleared(tmp_path):
    left = tmp_path / ".mlflow.db.new-12345-0badf00d"  # a build killed long ago
    left.write_bytes(b"half a database")
    os.utime(left, (time.time() - 3600, time.time() - 3600))
    recent = tmp_path / ".mlflow.db.new-12346-0badf00e"  # perhaps another process's, building
    recent.write_bytes(b"")
    create_sqlite_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [recent.name, "mlflow.db"]
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "metis", tmp_path / "mlartifacts")
    assert tracker.client.get_experiment_by_name("metis") is not None
    before = (tmp_path / "mlflow.db").stat().st_mtime_ns
    create_sqlite_store(f"sqlite:///{tmp_path / 'mlflow.db'}")  # there already: left alone
    assert (tmp_path / "mlflow.db").stat().st_mtime_ns == before


def test_a_file_system_without_hard_links_gets_the_store_by_rename(tmp_path, monkeypatch):
    def no_links(*_args):
        raise PermissionError("hard links are not supported here")

    monkeypatch.setattr(os, "link", no_links)
    create_sqlite_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [p.name for p in tmp_path.iterdir()] == ["mlflow.db"]
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "metis", tmp_path / "mlartifacts")
    assert tracker.client.get_experiment_by_name("metis") is not None
