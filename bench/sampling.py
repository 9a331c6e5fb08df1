"""What the engine bench samples of the processes a batch runs in: CPU seconds per kind of
process (worker, zygote, sandboxes, S3 server), the kernel's peak resident sizes (VmHWM) and
the sandboxes' own memory (USS), and when the workers have gone quiet."""

import threading
import time
from pathlib import Path

from bench.common import process_trees


class Usage(threading.Thread):
    """Samples the worker's and the sandboxes' memory and CPU while the batch lifecycle.

    Sandboxes are forked from the zygote, so much of their resident memory is the
    zygote's libraries, shared: their own share is the unique set size (USS). CPU is
    counted per process as last seen, so sandboxes that exit still count.

    Sampling takes CPU from the cores the batch runs on, so its costly parts (walking the
    process tree, each sandbox's USS) run every SLOW_SECONDS only; every TICK_SECONDS
    only the CPU times and the peak resident size of the processes already found are
    read. Peaks are the kernel's own high-water marks (VmHWM, the workers' reset when the
    batch starts), so none is missed between samples. A process found late still counts
    its CPU since it started. The sampling's own CPU is printed.

    Each worker's whole tree (the worker, its zygote and sandboxes) is summed too: at each
    sample, the high-water marks of its processes alive at that moment (each at least
    what the process held then, so no peak of one is missed between samples; shared
    pages count in each process: an upper bound), and every SLOW_SECONDS their
    proportional sets (PSS: shared pages split among their sharers, what the tree
    really holds). `tree_peaks` keeps the largest of each per worker, and `tree_worst` what
    its high-water marks were made of at that moment: {kind: (processes, bytes)}.
    """

    TICK_SECONDS, SLOW_SECONDS = 0.1, 1.0

    def __init__(self, worker_pids: list[int], s3_pid: int):
        super().__init__(daemon=True)
        self.worker_pids, self.s3_pid, self.stop_event = worker_pids, s3_pid, threading.Event()
        self.worker_peak = self.sandbox_peak = self.sandbox_unique_peak = 0
        self.tree_peaks = {pid: {"marks": 0, "pss": 0} for pid in worker_pids}
        self.tree_worst: dict[int, dict[str, tuple[int, int]]] = {}
        self.root: dict[int, int] = {}  # pid: the worker whose tree it is in
        self.known: dict[int, tuple[str, object]] = {}  # pid: (kind, psutil process)
        self.cpu: dict[int, tuple[str, float, float]] = {}
        self.own_cpu = 0.0
        self.find_processes()
        for pid, (kind, _) in self.known.items():
            if kind == "worker":  # "5" resets the peak resident size (proc(5), clear_refs)
                Path(f"/proc/{pid}/clear_refs").write_text("5")
        self.cpu_at_start = self.cpu_now()

    def find_processes(self) -> None:
        import psutil

        found = []
        for worker_pid in self.worker_pids:
            for process in process_trees([worker_pid]):
                self.root.setdefault(process.pid, worker_pid)
                found.append(process)
        for process in [*found, psutil.Process(self.s3_pid)]:
            if process.pid not in self.known:
                try:
                    self.known[process.pid] = (self.kind(process), process)
                except psutil.Error:
                    continue

    def cpu_now(self) -> dict[int, tuple[str, float, float]]:
        """(kind, CPU seconds, of which in the kernel) per process."""
        import psutil

        seen = {}
        for pid, (kind, process) in self.known.items():
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            seen[pid] = (kind, times.user + times.system, times.system)
        return seen

    @staticmethod
    def kind(process) -> str:
        if process.name() == "weed":
            return "S3 server"
        if "scoring.sandbox.zygote" not in " ".join(process.cmdline()):
            return "worker"
        if "scoring.sandbox.zygote" in " ".join(process.parent().cmdline()):
            return "sandboxes"
        return "zygote"

    def run(self) -> None:
        import psutil

        started, ticks = time.thread_time(), 0
        slow_every = round(self.SLOW_SECONDS / self.TICK_SECONDS)
        while not self.stop_event.wait(self.TICK_SECONDS):
            slow = ticks % slow_every == 0
            ticks += 1
            if slow:
                self.find_processes()
            self.cpu.update(self.cpu_now())
            marks = dict.fromkeys(self.worker_pids, 0)
            kinds = {pid: {} for pid in self.worker_pids}
            proportional = dict.fromkeys(self.worker_pids, 0)
            for pid, (kind, process) in self.known.items():
                if kind == "S3 server":
                    continue
                try:
                    mark = peak_rss(pid)
                    marks[self.root[pid]] += mark
                    count, held = kinds[self.root[pid]].get(kind, (0, 0))
                    kinds[self.root[pid]][kind] = (count + 1, held + mark)
                    full = process.memory_full_info() if slow else None
                    if full is not None:
                        proportional[self.root[pid]] += full.pss
                    if kind == "worker":
                        self.worker_peak = max(self.worker_peak, mark)
                    elif kind == "sandboxes":
                        self.sandbox_peak = max(self.sandbox_peak, mark)
                        if full is not None:
                            self.sandbox_unique_peak = max(self.sandbox_unique_peak, full.uss)
                except (psutil.Error, OSError):
                    continue  # gone: it no longer holds memory
            for worker_pid, peaks in self.tree_peaks.items():
                if marks[worker_pid] > peaks["marks"]:
                    peaks["marks"] = marks[worker_pid]
                    self.tree_worst[worker_pid] = kinds[worker_pid]
                peaks["pss"] = max(peaks["pss"], proportional[worker_pid])
        self.own_cpu = time.thread_time() - started

    def cpu_seconds(self, kernel: bool = False) -> dict[str, float]:
        """CPU seconds per kind of process during the batch (only in the kernel: `kernel`)."""
        which = 2 if kernel else 1
        spent: dict[str, float] = {}
        for pid, seen in self.cpu.items():
            before = self.cpu_at_start.get(pid, (seen[0], 0.0, 0.0))[which]
            spent[seen[0]] = spent.get(seen[0], 0.0) + seen[which] - before
        return spent


def peak_rss(pid: int) -> int:
    """The process's peak resident size in bytes, as the kernel counts it (VmHWM)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def settle(workers: list, timeout: float = 90) -> None:
    """Wait until the workers and their zygotes have done importing: a batch sent earlier
    would pay their start-up, which a running worker never does."""
    import psutil

    def cpu_seconds() -> float:
        total = 0.0
        for process in process_trees([worker.process.pid for worker in workers]):
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                continue
        return total

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds()
        time.sleep(1)
        if cpu_seconds() - before < 0.1:
            return
