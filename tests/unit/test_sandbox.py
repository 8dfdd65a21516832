"""The code sandbox: good programs are graded right, hostile ones are contained.

Every hostile test runs in each isolation mode this machine supports (namespaces as root, an
unprivileged user namespace, and the rlimits+audit-hook fallback) and checks the host afterwards.
Graded mode (tests in a trusted process) is in test_grading.py.
"""

import os
import secrets
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from metis_core.sandbox import SandboxLimits, SandboxUnavailable, isolation, run_tests
from metis_core.sandbox import TestsResult as Result  # not "Test*": pytest would collect it
from tests.unit.conftest import FAST, assert_no_strays, run_checked

pytestmark = pytest.mark.serial  # assert_no_strays looks at every process

REPO = Path(__file__).resolve().parents[2]


def _run(program: str, tests: list[str], mode: str, limits: SandboxLimits = FAST) -> Result:
    return run_checked(program, tests, mode, limits)


# --- the good path ---------------------------------------------------------------------------

SQUARE = "def f(x):\n    print('called', x)\n    return x * x\n"


def test_correct_program_passes_all_tests(mode: str) -> None:
    r = _run(SQUARE, ["assert f(2) == 4", "assert f(3) == 9", "assert f(0) == 0"], mode)
    assert r == Result([True, True, True], None, "called 2\ncalled 3\ncalled 0\n")


def test_partly_correct_program_passes_exactly_the_right_subset(mode: str) -> None:
    program = "def f(x):\n    return x * x if x < 3 else x + x\n"
    r = _run(program, ["assert f(2) == 4", "assert f(3) == 9", "assert f(1) == 1"], mode)
    assert r.passed == [True, False, True]
    assert r.reason == "test 1 failed: AssertionError"


def test_syntax_error_fails_every_test_with_the_reason(mode: str) -> None:
    r = _run("def f(x:\n    return x\n", ["assert f(1) == 1", "assert True"], mode)
    assert r.passed == [False, False]
    assert r.reason is not None and r.reason.startswith("SyntaxError")


def test_exception_in_one_test_fails_only_that_test(mode: str) -> None:
    r = _run(SQUARE, ["assert f(1) == 1", "f(None)", "assert f(2) == 4"], mode)
    assert r.passed == [True, False, True]
    assert r.reason is not None and "test 1 failed: TypeError" in r.reason


def test_program_error_fails_all_tests(mode: str) -> None:
    r = _run("def f(x):\n    return x\nraise ValueError('boom')\n", ["assert f(1) == 1"], mode)
    assert r.passed == [False]
    assert r.reason == "program raised ValueError: boom"


def test_namespace_is_shared_fresh_and_not_main(mode: str) -> None:
    program = "import math\nif __name__ == '__main__':\n    raise SystemExit(1)\n"
    tests = ["assert __name__ != '__main__'", "y = math.sqrt(16)", "assert y == 4.0"]
    assert _run(program, tests, mode).passed == [True, True, True]


def test_workdir_is_writable_private_and_removed(mode: str) -> None:
    program = "import os, shutil, tempfile\nopen('out.txt', 'w').write('hi')\nprint(os.getcwd())\n"
    tests = [
        "assert open('out.txt').read() == 'hi'",
        "assert os.listdir('.') == ['out.txt']",
        "os.makedirs('a/b'); open('a/b/c', 'w').close(); shutil.rmtree('a')",
        "with tempfile.TemporaryDirectory() as d: open(d + '/x', 'w').close()",
    ]
    r = _run(program, tests, mode)
    assert r.passed == [True] * 4, r.reason
    assert not os.path.exists(r.stdout.strip())


def test_hash_seed_is_fixed(mode: str) -> None:
    first = _run("print(hash('metis'), {'a', 'b', 'c'})", [], mode).stdout
    assert first and _run("print(hash('metis'), {'a', 'b', 'c'})", [], mode).stdout == first


def test_printed_fake_verdicts_are_ignored(mode: str) -> None:
    program = "import sys\nfor i in range(3):\n    print('\\n' + '0' * 32 + ' %d ok' % i)\n    print('%d ok' % i)\n"
    assert (
        _run(program, ["assert False", "assert False", "assert False"], mode).passed == [False] * 3
    )


def test_exit_in_the_middle_fails_the_remaining_tests(mode: str) -> None:
    r = _run(SQUARE, ["assert f(1) == 1", "import sys; sys.exit(0)", "assert f(2) == 4"], mode)
    assert r.passed == [True, False, False]
    assert r.reason == "test 1 called sys.exit(0)"
    r = _run(SQUARE, ["assert f(1) == 1", "import os; os._exit(0)", "assert f(2) == 4"], mode)
    assert r.passed == [True, False, False]
    assert r.reason is not None and "exited" in r.reason
    r = _run("import sys\nsys.exit(3)\n", ["assert True"], mode)
    assert r.passed == [False] and r.reason == "program called sys.exit(3)"


def test_mode_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isolation() in {"namespaces", "namespaces+userns"}  # auto never picks the fallback
    monkeypatch.setenv("METIS_SANDBOX", "rlimits")
    assert isolation() == "rlimits+audit-hook"
    r = run_tests("import os", ["os.fork()"], FAST)
    assert r.passed == [False] and r.reason is not None and "os.fork refused" in r.reason
    with pytest.raises(ValueError, match="unknown sandbox mode"):
        run_tests("", [], mode="docker")


def test_auto_refuses_the_weak_fallback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without namespaces, auto refuses to run model-written code and says what to do."""
    from flows.cli import main as cli_main
    from metis_core import sandbox
    from metis_core.domains.code import code_tests_reward

    monkeypatch.delenv("METIS_SANDBOX", raising=False)
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    sandbox._probe.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match="unshare.*METIS_SANDBOX=rlimits"):
            isolation()
        answer = '{"entry_point": "f", "tests": ["assert f() == 1"]}'
        with pytest.raises(SandboxUnavailable):
            code_tests_reward(["def f():\n    return 1\n"], answer=answer)
        mixed = str(REPO / "configs" / "mixed.yaml")  # a run with code refuses to start
        assert cli_main(["train", "--config", mixed]) == 2
        assert "METIS_SANDBOX=rlimits" in capsys.readouterr().err
        monkeypatch.setenv("METIS_SANDBOX", "rlimits")  # asked for explicitly: it runs
        assert code_tests_reward(["def f():\n    return 1\n"], answer=answer) == [1.0]
    finally:
        sandbox._probe.cache_clear()


# --- hostile programs ------------------------------------------------------------------------


def test_infinite_loop_is_stopped_by_cpu_limit(mode: str) -> None:
    limits = SandboxLimits(cpu_seconds=1, wall_seconds=20)  # wall is slack for a loaded machine
    r = _run("while True:\n    pass\n", ["assert True"], mode, limits)
    assert r.passed == [False]
    assert r.reason == "killed: CPU time limit (1 s)"
    assert_no_strays()


def test_infinite_loop_in_a_test_keeps_earlier_verdicts_and_hits_wall_clock(mode: str) -> None:
    limits = SandboxLimits(cpu_seconds=30, wall_seconds=2)
    tests = [
        "assert f(1) == 1",
        "assert f(2) == 4",
        "assert f(2) == 5",
        "while True: pass",
        "assert True",
    ]
    r = _run(SQUARE, tests, mode, limits)
    assert r.passed == [True, True, False, False, False]
    assert r.reason == "timed out after 2 s (wall)"
    assert_no_strays()


def test_fork_bomb_is_contained(mode: str) -> None:
    if mode == "userns" and os.geteuid() == 0:
        pytest.skip(
            "RLIMIT_NPROC does not bind uid 0 mapped to real root; only the wall clock would"
        )
    r = _run("import os\nwhile True:\n    os.fork()\n", ["assert True"], mode)
    assert r.passed == [False]
    assert r.reason is not None
    assert_no_strays()


@pytest.mark.parametrize(
    "program",
    [
        "x = bytearray(2 * 2**30)\n",
        "chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))\n",
    ],
)
def test_memory_bomb_is_stopped(mode: str, program: str) -> None:
    r = _run(program, ["assert True"], mode)
    assert r.passed == [False]
    assert r.reason is not None and "memory" in r.reason.lower()


def test_printing_gigabytes_is_stopped_by_the_output_cap(mode: str) -> None:
    limits = SandboxLimits(wall_seconds=30, output_bytes=4096)  # not by the wall clock
    r = _run(
        "import sys\nwhile True:\n    sys.stdout.write('x' * 10**6)\n",
        ["assert True"],
        mode,
        limits,
    )
    assert r.passed == [False]
    assert r.reason == "output limit exceeded (more than 4096 bytes)"
    assert len(r.stdout) <= 4096
    assert_no_strays()


@pytest.fixture
def outside() -> Iterator[Path]:
    """A world-writable directory outside the sandbox (under /tmp, so any uid can reach it)."""
    path = Path(tempfile.mkdtemp(prefix="metis-sandbox-test-", dir="/tmp"))
    path.chmod(0o777)
    (path / "existing.txt").write_text("original")
    (path / "existing.txt").chmod(0o666)
    (path / "victim.txt").write_text("keep me")
    (path / "sub").mkdir(mode=0o777)
    (path / "sub" / "inner.txt").write_text("keep me too")
    yield path
    for p in sorted(path.rglob("*"), reverse=True):
        p.unlink() if not p.is_dir() else p.rmdir()
    path.rmdir()


def test_writing_and_deleting_outside_the_workdir_is_refused(mode: str, outside: Path) -> None:
    token = secrets.token_hex(6)
    etc, repo = Path(f"/etc/metis-sandbox-{token}"), REPO / f"metis-sandbox-{token}"
    program = f"import os, shutil\nD = {str(outside)!r}\n"
    tests = [
        "assert shutil.rmtree",  # control: the only test that may pass (namespace modes do not
        # even show D)
        "open(D + '/new.txt', 'w').write('pwned')",
        "open(D + '/existing.txt', 'a').write('pwned')",
        "os.remove(D + '/victim.txt')",
        "os.rename(D + '/victim.txt', D + '/moved.txt')",
        "shutil.rmtree(D + '/sub')",
        "os.mkdir(D + '/newdir')",
        "os.chmod(D + '/existing.txt', 0o600)",
        f"open({str(etc)!r}, 'w').write('pwned')",
        f"open({str(repo)!r}, 'w').write('pwned')",
        "os.symlink('/etc/passwd', 'link'); open('link', 'a').write('pwned')",
        "os.mkdir('viafd', dir_fd=os.open(D, os.O_RDONLY))",
        "os.chdir(D); open('chdir.txt', 'w').write('pwned')",
    ]
    try:
        r = _run(program, tests, mode)
        assert r.passed == [True] + [False] * (len(tests) - 1), r.passed
        assert sorted(p.name for p in outside.iterdir()) == ["existing.txt", "sub", "victim.txt"]
        assert (outside / "existing.txt").read_text() == "original"
        assert stat.S_IMODE((outside / "existing.txt").stat().st_mode) == 0o666
        assert (outside / "victim.txt").read_text() == "keep me"
        assert (outside / "sub" / "inner.txt").read_text() == "keep me too"
        assert not etc.exists() and not repo.exists()
    finally:
        for path in (etc, repo):
            path.unlink(missing_ok=True)


def test_network_connections_are_refused(mode: str) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        port = listener.getsockname()[1]
        program = "import socket\n"
        tests = [
            "assert socket.socket",  # control
            f"socket.create_connection(('127.0.0.1', {port}), timeout=1)",
            f"s = socket.socket(); s.settimeout(1); s.connect(('127.0.0.1', {port}))",
            f"s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'x', ('127.0.0.1', {port}))",
        ]
        r = _run(program, tests, mode)
        assert r.passed == [True, False, False, False]
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_environment_secrets_are_invisible(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = secrets.token_hex(16)
    monkeypatch.setenv("METIS_TEST_SECRET", secret)
    program = (
        "import os\n"
        "print(dict(os.environ))\n"
        "pid = os.getpid()\n"
        "while pid > 1:\n"  # every ancestor's environment
        "    try:\n"
        "        print(open('/proc/%d/environ' % pid, 'rb').read())\n"
        "        pid = int([l for l in open('/proc/%d/status' % pid) if l.startswith('PPid')][0].split()[1])\n"
        "    except Exception as e:\n"
        "        print('refused', pid, e)\n"
        "        break\n"
        "for p in os.listdir('/proc'):\n"  # and every visible process's
        "    try:\n"
        "        print(open('/proc/%s/environ' % p, 'rb').read())\n"
        "    except Exception:\n"
        "        pass\n"
    )
    limits = SandboxLimits(wall_seconds=10, output_bytes=2**20)
    r = _run(program, ["assert 'METIS_TEST_SECRET' not in os.environ"], mode, limits)
    assert r.passed == [True], r.reason
    assert "METIS_TEST_SECRET" not in r.stdout and secret not in r.stdout


def test_a_workdir_too_deep_for_rmtree_is_removed(mode: str) -> None:
    program = (
        "import os\n"
        "for _ in range(1500):\n"
        "    os.mkdir('d'); os.chdir('d')\n"
        "open('leaf', 'w').close()\n"
        "os.chdir('/')\n"
    )
    r = _run(program + "print(os.environ['HOME'])\n", ["assert True"], mode)
    assert r.passed == [True], r.reason
    assert not os.path.exists(r.stdout.strip())  # Python's rmtree raised RecursionError here
