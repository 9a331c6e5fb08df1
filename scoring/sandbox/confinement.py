"""What a sandbox does to itself, just forked and before it reads a byte of the package.

Each step is the kernel's, each is tried and each is reported, so the status page can
say which protections this host gives and why the others are missing:

- its own user: as root it becomes a user id of its own (BASE_UID + its pid), with no
  groups, no capabilities and no way to gain privileges again; that user owns its folder;
- a process limit (RLIMIT_NPROC) that counts only that user's processes and threads;
- Landlock: it writes only in its own folder and reads only Python, its libraries and a
  few system files: not the project, settings, state, home or any /proc entry (so not the
  worker's environment or command line); it can neither signal nor trace processes
  outside the sandbox, nor make TCP connections;
- a network namespace of its own (no interface but a loopback that is down), and a
  seccomp filter refusing Unix sockets, which a network namespace does not cut (a
  database's socket file is one);
- a mount namespace where a folder it must read behind one it may not enter (Python
  under root's home) is shown alone, the rest of that folder hidden.

Landlock rules stop reads and writes, not metadata: a path's existence, size and times
can still be learnt by anyone who guesses its name.
"""

import ctypes
import os
import platform
import resource
import signal
import struct
import sys
from pathlib import Path

BASE_UID = 0x70000000  # + the sandbox's pid: above the ranges systems hand out to users
NOBODY = 65534
HOME_DIR = "sandbox"  # the sandbox's own folder, inside the one the worker made for it


def bare_environment(home: str) -> dict[str, str]:
    """All a sandbox inherits (the zygote starts with it): no credential of the worker's."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": home,
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


# A sandbox holding any other variable of the worker's has a leak.
ENVIRONMENT = set(bare_environment(""))
# Read-only for the package: Python, its libraries, and what libc asks of /etc and /sys.
SYSTEM_PATHS = (
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/bin",
    "/sbin",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/sys/devices/system/cpu",
    "/sys/fs/cgroup",
)
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]


def call(result: int) -> None:
    """Raise the C library's error when a call failed."""
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def confine(workdir: Path, processes: int, parent_variables: list[str]) -> dict:
    """Apply every protection this host allows; {name: {"active": bool, "detail": str}}.

    The sandbox works in HOME_DIR inside the worker's folder for it: the worker's own
    files there (the package, the data it hands over) stay the worker's, and the folder
    holds no link the sandbox could plant for the worker to follow."""
    workdir = Path(workdir)
    parent = os.getppid()
    home = workdir / HOME_DIR
    home.mkdir(mode=0o700, exist_ok=True)
    as_root = os.geteuid() == 0
    uid = own_user(workdir, home) if as_root else os.getuid()
    readable = readable_paths()
    report = {"environment": environment(parent_variables)}
    network = attempt(lambda: call(libc.unshare(CLONE_NEWNET)))
    hidden = attempt(lambda: expose_alone([*readable, home], uid)) if as_root else None
    ruleset = attempt(lambda: Landlock(readable, home))
    call(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))  # no setuid binary gives privileges back
    report["user"] = drop_privileges(uid, parent) if as_root else keep_user()
    os.chdir(home)
    os.environ.update(HOME=str(home), TMPDIR=str(home))
    report["process_limit"] = process_limit(uid, processes)
    if isinstance(ruleset, Landlock):
        landlock = attempt(ruleset.restrict_self)
        abi = ruleset.abi
    else:
        landlock, abi = ruleset, 0
    unix_sockets = attempt(forbid_unix_sockets)
    report["files"] = files_report(landlock, hidden)
    report["other_processes"] = processes_report(landlock, abi, report["user"]["active"])
    report["network"] = network_report(network, unix_sockets, abi)
    return report


def attempt(step) -> str | object:
    """The step's result (None when it returns nothing), or why the kernel refused it."""
    try:
        return step()
    except OSError as exc:
        return f"{exc.strerror or exc}"


def refused(outcome) -> bool:
    return isinstance(outcome, str)


def entry(active: bool, detail: str) -> dict:
    return {"active": active, "detail": detail if active else f"not available: {detail}"}


def environment(parent_variables: list[str]) -> dict:
    """Whether it holds any variable of the process that started it, bar the harmless few."""
    leaked = sorted(set(os.environ) & set(parent_variables) - ENVIRONMENT)
    if leaked:
        return entry(False, f"it holds the worker's {', '.join(leaked)}")
    shared = sorted(set(os.environ) & set(parent_variables))
    detail = "none of the worker's variables"
    return entry(True, detail + (f" (it has its own {', '.join(shared)})" if shared else ""))


def readable_paths() -> list[Path]:
    import scoring

    # An environment of pinned libraries appends the worker's site-packages to its own
    # (scoring.sandbox.environments): those are its libraries too. Only site-packages: other
    # entries of sys.path may be the project's folder.
    site_packages = [path for path in sys.path if Path(path).name == "site-packages"]
    paths = [
        *SYSTEM_PATHS,
        sys.base_prefix,
        sys.prefix,
        *site_packages,
        Path(scoring.__file__).parent,
    ]
    return [Path(path) for path in dict.fromkeys(map(str, paths)) if os.path.exists(path)]


# --- its own user ----------------------------------------------------------------


def own_user(workdir: Path, home: Path) -> int:
    """The user the sandbox will be, owner of its home; nobody where the host maps no
    user id of the sandbox's own (a user namespace). Its group alone may pass through
    the worker's folder to its home."""
    try:
        uid = BASE_UID + os.getpid()
        os.chown(home, uid, uid)
    except OSError:
        uid = NOBODY
        os.chown(home, uid, uid)
    os.chown(workdir, -1, uid)
    os.chmod(workdir, 0o710)
    return uid


def drop_privileges(uid: int, parent: int) -> dict:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    # A new user clears the parent-death signal: set it again, lest a killed zygote
    # leave its sandboxes running.
    call(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0))
    if os.getppid() != parent:
        raise OSError("the sandbox's parent died as it started")
    capabilities = capability_sets()
    if capabilities:
        return entry(False, f"it kept capabilities {capabilities}")
    name = "a user of its own" if uid != NOBODY else "nobody (the host maps no other id)"
    return entry(True, f"uid {uid}, {name}: no groups, no capabilities, no new privileges")


def keep_user() -> dict:
    detail = f"the worker runs as uid {os.getuid()}, not root, so its sandboxes stay that user"
    return entry(False, detail + " (without new privileges)")


def capability_sets() -> dict[str, str]:
    with open("/proc/self/status") as status:
        fields = dict(line.split(":\t", 1) for line in status if line.startswith("Cap"))
    return {k: v.strip() for k, v in fields.items() if k != "CapBnd" and int(v, 16)}


def process_limit(uid: int, processes: int) -> dict:
    if uid < BASE_UID:  # root, nobody or the worker's user: the count would not be its own
        why = "sandboxes do not have a user of their own here, and the limit counts per user"
        return entry(False, why)
    resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
    return entry(True, f"at most {processes} processes and threads")


# --- what it sees of the file system -------------------------------------------------


def expose_alone(paths: list[Path], uid: int) -> list[str]:
    """In a mount namespace of its own, cover each folder its user may not enter (root's
    home, pytest's base folder) with an empty read-only tmpfs that shows only the paths
    beneath it that the sandbox needs. The folders it covered."""
    blocked: dict[Path, list[Path]] = {}
    for path in paths:
        closed = [p for p in reversed(path.parents) if p != Path("/") and not enterable(p, uid)]
        if closed:
            blocked.setdefault(closed[0], []).append(path)
    if not blocked:
        return []
    call(libc.unshare(CLONE_NEWNS))
    call(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None))
    for top, inside in blocked.items():
        handles = {path: os.open(path, os.O_PATH) for path in inside}
        call(libc.mount(b"tmpfs", bytes(top), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=755"))
        for path, handle in handles.items():
            if os.path.isdir(f"/proc/self/fd/{handle}"):
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            source = f"/proc/self/fd/{handle}".encode()
            call(libc.mount(source, bytes(path), None, MS_BIND | MS_REC, None))
            os.close(handle)
        flags = MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
        call(libc.mount(None, bytes(top), None, flags, None))
    return sorted(map(str, blocked))


def enterable(folder: Path, uid: int) -> bool:
    """Whether the sandbox's user (its group the same number, no other) may pass through."""
    try:
        stat = os.stat(folder)
    except OSError:
        return True  # missing: nothing to hide, opening it fails later
    if stat.st_uid == uid:
        return bool(stat.st_mode & 0o100)
    return bool(stat.st_mode & (0o010 if stat.st_gid == uid else 0o001))


def files_report(landlock, hidden) -> dict:
    if refused(landlock):
        return entry(False, f"Landlock: {landlock}")
    detail = "it writes only in its own folder and reads only Python, its libraries and "
    detail += "system files (Landlock)"
    if refused(hidden):
        detail += f"; folders it may not enter were not bridged ({hidden}): only modules "
        detail += "the zygote preloaded import"
    elif hidden:
        detail += f"; {', '.join(hidden)} hidden but for what it needs"
    return entry(True, detail)


def processes_report(landlock, abi: int, dropped: bool) -> dict:
    if refused(landlock):
        return entry(False, f"without Landlock it can read /proc: {landlock}")
    if abi < SCOPE_ABI and not dropped:
        return entry(
            False, "it may signal its user's processes: this Landlock cannot scope signals"
        )
    return entry(True, "no /proc entry is open to it, nor signals or tracing beyond itself")


def network_report(network, unix_sockets, abi: int) -> dict:
    missing = []
    if refused(network):
        missing.append(f"no network namespace ({network})")
    if refused(unix_sockets):
        missing.append(f"Unix sockets allowed ({unix_sockets})")
    if missing:
        tcp = "; Landlock forbids TCP" if abi >= NET_ABI else ""
        return entry(False, "; ".join(missing) + tcp)
    return entry(True, "a network namespace of its own, no Unix sockets (seccomp)")


# --- Landlock -------------------------------------------------------------------

SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1, 2, 4, 8
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
FILE_ONLY = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ_ONLY = EXECUTE | READ_FILE | READ_DIR
NET_ABI, SCOPE_ABI = 4, 6
BIND_TCP, CONNECT_TCP = 1, 2
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1, 2


class RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class Landlock:
    """A ruleset: these paths read-only, its home read-write, devices usable, nothing else."""

    def __init__(self, readable: list[Path], home: Path):
        self.abi = libc.syscall(
            SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION
        )
        call(self.abi)
        self.handled = (1 << 13) - 1  # the thirteen rights of ABI 1
        self.handled |= (REFER if self.abi >= 2 else 0) | (TRUNCATE if self.abi >= 3 else 0)
        self.handled |= IOCTL_DEV if self.abi >= 5 else 0
        attr = RulesetAttr(self.handled, 0, 0)
        if self.abi >= NET_ABI:
            attr.handled_access_net = BIND_TCP | CONNECT_TCP  # and no port is allowed
        if self.abi >= SCOPE_ABI:
            attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        self.fd = libc.syscall(
            SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.sizeof(attr), 0
        )
        call(self.fd)
        for path in readable:
            self.allow(path, READ_ONLY)
        self.allow(home, self.handled)
        for device in DEVICES:
            if os.path.exists(device):
                self.allow(Path(device), READ_FILE | WRITE_FILE | TRUNCATE)

    def allow(self, path: Path, access: int) -> None:
        handle = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            if not os.path.isdir(path):
                access &= FILE_ONLY
            rule = PathBeneathAttr(access & self.handled, handle)
            call(
                libc.syscall(
                    SYS_LANDLOCK_ADD_RULE,
                    self.fd,
                    LANDLOCK_RULE_PATH_BENEATH,
                    ctypes.byref(rule),
                    0,
                )
            )
        finally:
            os.close(handle)

    def restrict_self(self) -> None:
        try:
            call(libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, self.fd, 0))
        finally:
            os.close(self.fd)


# --- seccomp: no Unix sockets --------------------------------------------------------

# (audit arch, socket syscall number) per machine; io_uring_setup is 425 on both.
SECCOMP_ARCHES = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}
IO_URING_SETUP = 425
X32_SYSCALL_BIT = 0x40000000
AF_UNIX = 1
EACCES = 13
LD_ABS_W, JEQ, JGE, RET = 0x20, 0x15, 0x35, 0x06
ALLOW, KILL_PROCESS, ERRNO = 0x7FFF0000, 0x80000000, 0x00050000


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def forbid_unix_sockets() -> None:
    """A seccomp filter: socket(AF_UNIX, ...) fails with EACCES, and so does io_uring,
    which would make sockets beyond seccomp's sight. Other architectures' syscalls (the
    32-bit ABIs) kill the process: their numbers differ and would slip past."""
    if platform.machine() not in SECCOMP_ARCHES:
        raise OSError(f"no filter written for {platform.machine()}")
    arch, socket_nr = SECCOMP_ARCHES[platform.machine()]
    program = [
        (LD_ABS_W, 0, 0, 4),  # seccomp_data.arch
        (JEQ, 1, 0, arch),
        (RET, 0, 0, KILL_PROCESS),
        (LD_ABS_W, 0, 0, 0),  # seccomp_data.nr
        (JGE, 5, 0, X32_SYSCALL_BIT),
        (JEQ, 4, 0, IO_URING_SETUP),
        (JEQ, 0, 2, socket_nr),
        (LD_ABS_W, 0, 0, 16),  # the low half of args[0], the address family
        (JEQ, 1, 0, AF_UNIX),
        (RET, 0, 0, ALLOW),
        (RET, 0, 0, ERRNO | EACCES),
    ]
    code = b"".join(struct.pack("HBBI", *instruction) for instruction in program)
    fprog = SockFprog(len(program), code)
    call(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0))
