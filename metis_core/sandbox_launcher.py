# metis-sandbox-launcher
"""The sandbox's launcher: the program `metis_core.sandbox` starts in a fresh process, as its
`python -c` source (this file's text, plus `main()`; graded mode appends `serve` from
`metis_core.grading`). It must not import metis or anything outside the standard library: it
runs under `python -s -S -B -P`, and in the namespace modes inside a fresh root that holds only
the system and the stdlib. It reads its config as JSON on stdin, confines itself, drops every
privilege, and forks the worker that runs the program; `<nonce> ...` lines report to the parent.
"""

# It runs stripped down (no contextlib, one-shot reads of /proc files, closures captured before
# the program can patch anything), hence:
# ruff: noqa: SIM105, SIM115, SIM905, E731, UP031
import json
import os
import resource
import sys

# the common modules the fallback loads before it switches to an unprivileged uid (one string:
# a list literal would be 50 lines)
PRELOAD = (
    "math cmath re itertools functools collections collections.abc string heapq bisect typing "
    "json random statistics fractions decimal hashlib copy operator datetime time textwrap "
    "unicodedata array struct dataclasses enum abc io numbers contextlib traceback queue "
    "threading base64 binascii zlib pprint calendar secrets types warnings weakref ast inspect "
    "socket encodings.idna tempfile pathlib shutil glob fnmatch csv"
).split()


def main():
    cfg = json.loads(sys.stdin.buffer.read())
    for path in cfg.get("cgroups", ()):
        open(path, "w").write("0")  # join the tree's cgroup first
    fd = os.open("/dev/null", os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    nonce, work, mode, uid, lim = cfg["nonce"], cfg["work"], cfg["mode"], cfg["uid"], cfg["limits"]
    out, write, ns = os.dup(1), os.write, mode != "rlimits+audit-hook"

    def report(*words):
        write(
            out,
            ("\n{} {}\n".format(nonce, " ".join(map(str, words)))).encode(
                "ascii", "backslashreplace"
            ),
        )

    try:
        for name in PRELOAD if not ns and uid is not None else ():
            __import__(name)  # stdlib under /root
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)

        def check(rc, what):
            if rc != 0:
                raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")

        if ns:
            confine(libc, check, work, cfg["root"], uid)
        os.chdir(work)
        if uid is not None or mode == "namespaces+userns":
            for cap in range(int(open("/proc/sys/kernel/cap_last_cap").read()) + 1):
                check(libc.prctl(24, ctypes.c_ulong(cap), 0, 0, 0), "PR_CAPBSET_DROP")
        for res, soft, hard in (
            ("CPU", lim[0], lim[0] + 1),
            ("AS", lim[1], lim[1]),
            ("FSIZE", lim[2], lim[2]),
            ("NPROC", lim[3], lim[3]),
            ("CORE", 0, 0),
            ("NOFILE", 64, 64),
        ):
            resource.setrlimit(getattr(resource, "RLIMIT_" + res), (soft, hard))
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        elif mode == "namespaces+userns":
            libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL; then capset() to all-zero sets
            check(
                libc.capset((ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()), "capset"
            )
        check(libc.prctl(38, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
        if [int(s.split()[1], 16) for s in open("/proc/self/status") if s.startswith("CapEff")] != [
            0
        ]:
            raise OSError("capabilities still effective")
        del libc, check
        for name in [m for m in sys.modules if m.split(".")[0] in ("ctypes", "_ctypes")]:
            del sys.modules[name]
    except Exception as e:
        report("stop", f"sandbox setup failed: {type(e).__name__}: {e}")
        os._exit(70)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:  # supervisor (PID 1 under namespaces): report how the worker ended
        _, status, ru = os.wait4(pid, 0)
        how = (
            "signal %d" % os.WTERMSIG(status)
            if os.WIFSIGNALED(status)
            else "code %d" % os.WEXITSTATUS(status)
        )
        report("exit", how, "%.3f" % (ru.ru_utime + ru.ru_stime))
        os._exit(0)
    if not ns:
        sys.addaudithook(make_hook(work, os.getpid(), cfg["root"]))
    if "entry" in cfg:
        serve(cfg, report)  # noqa: F821 (metis_core.grading appends it)
    worker(cfg["program"], cfg["tests"], report)


def confine(libc, check, work, plan, uid):
    # a fresh root (tmpfs) from _root_plan(): read-only binds of the system and the stdlib, no
    # site-packages, no repository, no host /tmp or /run; the workdir a size-limited tmpfs
    keep = {
        "nosuid": 2,
        "nodev": 4,
        "noexec": 8,
        "noatime": 1024,
        "nodiratime": 2048,
        "relatime": 1 << 21,
    }

    def mount(src, dst, flags, fstype=None, data=None):
        enc = lambda v: None if v is None else v.encode()
        check(libc.mount(enc(src), dst.encode(), enc(fstype), flags, enc(data)), "mount " + dst)

    mount(None, "/", 16384 | 1 << 18)  # MS_REC | MS_PRIVATE
    mount("tmpfs", work, 6, "tmpfs", "size=4m,nr_inodes=4096,mode=755")  # the new root
    new = lambda p: work + p
    for link, target in plan["links"]:
        os.symlink(target, new(link))
    for source, path in plan["binds"]:
        os.makedirs(new(path), 0o755, exist_ok=True)
        mount(source, new(path), 4096 | 16384)  # MS_BIND | MS_REC
    os.makedirs(new("/dev"), 0o755)
    for node in ("null", "zero", "random", "urandom"):
        open(new("/dev/" + node), "w").close()
        mount("/dev/" + node, new("/dev/" + node), 4096)
    os.makedirs(new("/proc"), 0o555)
    mount("/proc", new("/proc"), 4096 | 16384)
    for path in plan["hide"]:  # e.g. site-packages inside a bound /usr: an empty read-only tmpfs
        if os.path.isdir(new(path)):
            mount("tmpfs", new(path), 1 | 2 | 4 | 8, "tmpfs", "size=4k,mode=555")
    os.makedirs(new(work), 0o755)
    mount(
        "tmpfs",
        new(work),
        6,
        "tmpfs",
        "size=%d,nr_inodes=%d,mode=700" % (plan["bytes"], plan["inodes"]),
    )
    if uid is not None:
        os.chown(new(work), uid, uid)
    os.chdir(work)
    if plan["pivot_root"]:  # the syscall's number on this architecture
        check(libc.syscall(plan["pivot_root"], b".", b"."), "pivot_root")
        check(libc.umount2(b".", 2), "umount old root")  # MNT_DETACH
    else:
        os.chroot(".")  # CAP_SYS_CHROOT is dropped below, so there is no way back out
    os.chdir("/")
    rows = [line.split() for line in open("/proc/self/mountinfo")]
    points = [row[4].encode().decode("unicode_escape") for row in rows]  # \040 -> " "
    for row, point in zip(
        rows, points, strict=False
    ):  # MS_REMOUNT | MS_BIND | (NOSUID | NODEV or RDONLY)
        flags = 32 | 4096 | (6 if point == work else 1)
        try:
            mount(None, point, flags | sum(keep.get(opt, 0) for opt in row[5].split(",")))
        except OSError:
            pass  # e.g. a shadowed mount point: the statvfs check below decides
    for point in points:
        try:
            ok = point == work or os.statvfs(point).f_flag & os.ST_RDONLY
        except OSError:
            ok = True  # not reachable
        if not ok:
            raise RuntimeError(f"could not make {point} read-only")


def make_hook(work, me, plan):
    getcwd, readlink, isdir, fsdecode, str_, bytes_, int_ = (
        os.getcwd,
        os.readlink,
        os.path.isdir,
        os.fsdecode,
        str,
        bytes,
        int,
    )
    W = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    deny = frozenset(
        [
            "socket.connect",
            "socket.bind",
            "socket.getaddrinfo",
            "socket.gethostbyname",
            "socket.gethostbyaddr",
            "socket.sendto",
            "socket.sendmsg",
            "subprocess.Popen",
            "os.system",
            "os.exec",
            "os.fork",
            "os.forkpty",
            "os.posix_spawn",
            "os.spawn",
            "ctypes.dlopen",
            "ctypes.dlsym",
            "os.symlink",
            "os.link",
            "os.killpg",
            "sys.settrace",
            "sys.setprofile",
        ]
    )
    paths = [
        "os.remove",
        "os.rmdir",
        "os.rename",
        "shutil.rmtree",
        "os.chmod",
        "os.chown",
        "os.mkdir",
        "os.truncate",
        "os.utime",
        "os.chflags",
    ]

    def norm(p):  # lexical, and only with captured functions: monkeypatching os cannot fool it
        parts = []
        p = fsdecode(p) if isinstance(p, bytes_) else p
        for s in (p if p.startswith("/") else getcwd() + "/" + p).split("/"):
            if s == "..":
                parts = parts[:-1]
            elif s not in ("", "."):
                parts.append(s)
        return "/" + "/".join(parts)

    under = lambda p, top: p == top or p.startswith(top + "/")
    inside = lambda p: not isinstance(p, int_) and under(norm(p), work)
    readable = (
        *(p for pair in plan["binds"] for p in pair),
        "/proc",
        "/dev/null",
        "/dev/zero",
        "/dev/random",
        "/dev/urandom",
    )
    hidden = tuple(plan["hide"])

    def at(p, fd):  # the path a dir_fd-relative call really acts on
        if fd in (None, -1) or isinstance(p, int_) or (p := fsdecode(p)).startswith("/"):
            return p
        return readlink("/proc/self/fd/%d" % fd) + "/" + p

    def hook(event, args):
        bad = event in deny
        if event == "import":
            bad = args[0] in ("_posixsubprocess", "_ctypes", "ctypes")
        elif event == "open" and isinstance(args[0], (str_, bytes_)):
            p, mode, flags = norm(args[0]), args[1] or "", args[2] or 0
            q = p.split("/") + [""]
            if q[1] == "proc" and (
                q[2].isdigit()
                and q[2] != str_(me)
                or q[2] in ("self", "thread-self")
                and q[3] in ("root", "cwd", "fd", "task", "map_files", "exe")
            ):
                bad = True
            elif not inside(p):  # read-only, and only what the namespace modes' root would show
                bad = (
                    flags & W
                    or any(c in mode for c in "wax+")
                    or isdir(p)
                    or any(under(p, h) for h in hidden)
                )
                bad = bad or not any(under(p, r) for r in readable)
        elif event in paths:
            fds = (
                args[2:4]
                if event == "os.rename"
                else (None,)
                if event in ("os.truncate", "os.chflags")
                else args[-1:]
            )
            bad = not all(inside(at(p, fd)) for p, fd in zip(args, fds, strict=False))
        elif event == "os.kill":
            bad = args[0] != me
        elif event == "object.__setattr__":  # e.g. replacing this hook's __code__
            bad = args[1] in ("__code__", "__defaults__", "__kwdefaults__")
        if bad:
            raise PermissionError(f"sandbox: {event} refused")

    return hook


def worker(program, tests, report):
    import builtins

    me, getpid, _exit = os.getpid(), os.getpid, os._exit
    ns = {"__builtins__": builtins, "__name__": "__sandbox__"}

    def flush():
        for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                s.flush()
            except BaseException:
                pass

    def err(e):
        if isinstance(e, MemoryError):
            return "MemoryError: memory limit exceeded"
        try:
            text = type(e).__name__ + (f": {e}" if str(e) else "")
        except BaseException:
            text = type(e).__name__
        return " ".join(text.split())[:300]

    def run(src, name):
        try:
            exec(compile(src, name, "exec", dont_inherit=True), ns)
        except BaseException as e:
            return e
        finally:
            if getpid() != me:
                _exit(0)  # a fork made by the user code: never report

    e = run(program, "<program>")
    flush()
    if e is not None:  # the tests need the program: stop here
        why = err(e) if isinstance(e, SyntaxError) else "program raised " + err(e)
        report(
            "stop",
            f"program called sys.exit({e.code!r})" if isinstance(e, SystemExit) else why,
        )
        _exit(0)
    for i, test in enumerate(tests):
        e = run(test, "<test %d>" % i)
        flush()
        report(i, "ok" if e is None else "fail " + err(e))
        if isinstance(e, SystemExit):
            report("stop", "test %d called sys.exit(%r)" % (i, e.code))
            _exit(0)
    flush()
    report("done")
    _exit(0)
