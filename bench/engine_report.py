"""What the engine bench prints: the first round's batches against the physical limit and the
naive way, with their medians, and the scale-out over the worker counts."""

import os
import statistics

from bench.engine_data import MODELS


def report(first: dict, rows: int) -> None:
    """One column per batch of the first round, and the median of each line."""
    batches = first["batches"]

    def line(label: str, values: list[float], fmt: str, note: str = "") -> str:
        cells = "".join(f"{fmt.format(v):>12}" for v in values)
        median = f"{fmt.format(statistics.median(values)):>12}" if len(values) > 1 else ""
        return f"{label:<26}{cells}{median}  {note}".rstrip()

    seconds = [b["seconds"] for b in batches]
    limits = [b["limit"].seconds for b in batches]
    engine_cpu = [b["usage"].cpu_seconds() for b in batches]
    kernel_cpu = [b["usage"].cpu_seconds(kernel=True) for b in batches]
    baselines = [b["baseline"].get("kind", "none") for b in batches]
    header = "".join(f"{'batch ' + str(k + 1):>12}" for k in range(len(batches)))
    print(f"\n{first['workers']} worker(s), {batches[0]['parts'] or 'no'} parts")
    print(f"{'':<26}{header}{'median' if len(batches) > 1 else '':>12}")
    for text in (
        line("checks against", [], "", " / ".join(baselines)),
        line("rows x models / s", [rows * MODELS / t for t in seconds], "{:,.0f}"),
        line("batch (engine)", seconds, "{:.2f} s"),
        line(
            "physical limit",
            limits,
            "{:.2f} s",
            "(one read of the union + raw predict + each model's scores to S3)",
        ),
        line("  read", [b["limit"].read for b in batches], "{:.2f} s"),
        line("  predict", [b["limit"].predict for b in batches], "{:.2f} s"),
        line("  write", [b["limit"].write for b in batches], "{:.2f} s"),
        line(
            "batch / limit",
            [b["seconds"] / b["limit"].seconds for b in batches],
            "{:.2f}x",
            "(target <= 1.3x)",
        ),
        line(
            "  without its checks",
            [(b["seconds"] - b["quality_seconds"]) / b["limit"].seconds for b in batches],
            "{:.2f}x",
            "(the scoring alone)",
        ),
        line(
            "naive",
            [b["naive"] for b in batches],
            "{:.2f} s",
            "(each model reads its columns, predicts, writes its scores to S3)",
        ),
        line(
            "naive / batch",
            [b["naive"] / b["seconds"] for b in batches],
            "{:.2f}x",
            "(target > 1x: faster than the naive way)",
        ),
        line("quality checks", [b["quality_seconds"] for b in batches], "{:.2f} s"),
        line(
            "  share of the batch",
            [100 * b["quality_seconds"] / b["seconds"] for b in batches],
            "{:.0f}%",
            "(target <= 15%)",
        ),
        line("CPU s, engine", [sum(c.values()) for c in engine_cpu], "{:.1f}"),
        *(
            line(f"  {kind}", [c.get(kind, 0.0) for c in engine_cpu], "{:.1f}")
            for kind in sorted({kind for c in engine_cpu for kind in c})
        ),
        line("  of which in the kernel", [sum(c.values()) for c in kernel_cpu], "{:.1f}"),
        *(
            line(f"    {kind}", [c.get(kind, 0.0) for c in kernel_cpu], "{:.1f}")
            for kind in sorted({kind for c in kernel_cpu for kind in c})
        ),
        line("CPU s, sampling them", [b["usage"].own_cpu for b in batches], "{:.1f}"),
        line("CPU s, limit", [b["limit"].cpu for b in batches], "{:.1f}"),
        line("  of which in the kernel", [b["limit"].kernel_cpu for b in batches], "{:.1f}"),
        line("peak RSS worker", [b["usage"].worker_peak / 1024**2 for b in batches], "{:,.0f} MB"),
        line(
            "peak RSS sandbox", [b["usage"].sandbox_peak / 1024**2 for b in batches], "{:,.0f} MB"
        ),
        line(
            "  its own (USS)",
            [b["usage"].sandbox_unique_peak / 1024**2 for b in batches],
            "{:,.0f} MB",
        ),
    ):
        print(text)
    for k, b in enumerate(batches, start=1):
        print(f"batch {k}: {b['phases']}")
    print(flush=True)


def scale_out(rounds: list[dict], rows: int) -> int:
    """The speedup of each worker count over the first (median batches), against what
    its split allows; non-zero when a split batch's parts were not spread over the workers."""
    if len(rounds) < 2 and rounds[0]["workers"] == 1:
        return 0
    for result in rounds:
        result["seconds"] = statistics.median(b["seconds"] for b in result["batches"])
    base = rounds[0]
    print(
        f"scale-out on {os.cpu_count()} cores, speedup over {base['workers']} worker(s) "
        f"(median batch {base['seconds']:.2f} s)"
    )
    print("workers  parts  largest part   batch    speedup  per worker  split allows  peak RSS")
    broken = []
    for result in rounds:
        batch = result["batches"][0]
        speedup = base["seconds"] / result["seconds"]
        per_worker = speedup / (result["workers"] / base["workers"])
        # Parts are whole row groups: the largest one bounds the speedup of this split.
        allows = min(result["workers"], rows / batch["largest_part"]) / base["workers"]
        peak = max(b["usage"].worker_peak for b in result["batches"]) / 1024**2
        print(
            f"{result['workers']:>7}  {batch['parts']:>5}  {batch['largest_part']:>12,}  "
            f"{result['seconds']:>6.2f} s  {speedup:>6.2f}x  {per_worker:>9.2f}x"
            f"  {allows:>11.2f}x  {peak:>10,.0f} MB"
        )
        for b in result["batches"]:
            print(f"         {b['phases']}")
            spread = min(result["workers"], b["parts"])
            if b["parts"] and b["part_workers"] < spread:
                broken.append(
                    f"{result['workers']} workers: {b['parts']} parts were scored by only "
                    f"{b['part_workers']} of them"
                )
    for problem in broken:
        print(f"BOUND BROKEN: {problem}")
    return 1 if broken else 0


def side_by_side(firsts: list[dict], rows: int) -> None:
    """Each engine's median batch against the limit and the naive way of its own round, and
    for Spark what its tasks say of a cluster."""
    print("\nengine   batch     limit    batch/limit  naive/batch  rows x models / s")
    for first in firsts:
        batches = first["batches"]
        seconds = statistics.median(b["seconds"] for b in batches)
        limit = statistics.median(b["limit"].seconds for b in batches)
        naive = statistics.median(b["naive"] for b in batches)
        print(
            f"{first['engine']:<8}{seconds:>6.2f} s{limit:>8.2f} s{seconds / limit:>11.2f}x"
            f"{naive / seconds:>12.2f}x{rows * MODELS / seconds:>18,.0f}"
        )
        if first["engine"] == "spark":
            print(f"  {first['spark_start']} (in the first batch only)")
            for k, b in enumerate(batches, start=1):
                print(f"  batch {k}: {b['spark_tasks']}")
            print(cluster_estimate(batches))


def cluster_estimate(batches: list[dict]) -> str:
    """What N executor cores would take, from the last batch's own account: the driver's
    part (fetch, commit, checks) and Spark's overhead around the tasks stay; the tasks'
    work divides over the cores, the slice split in as many partitions as cores
    (spark.sql.files.maxPartitionBytes), each paying a task's fixed cost (`start`) once."""
    import re

    last = batches[-1]
    score = float(dict(re.findall(r"(\w+) (\d+\.\d+) s", last["phases"])).get("score", 0))
    tasks = re.search(r"(\d+) tasks, \d+ rows, (\d+\.\d+) task-seconds", last["spark_tasks"])
    start = re.search(r"start (\d+\.\d+) s", last["spark_tasks"])
    if not tasks or not start:
        return "  (no account of the Spark tasks in the log)"
    count, busy, start = int(tasks.group(1)), float(tasks.group(2)), float(start.group(1))
    driver = last["seconds"] - score
    overhead = max(score - busy / min(count, os.cpu_count() or 1), 0.0)
    lines = [
        f"  on N executor cores: driver {driver:.2f} s + Spark's overhead {overhead:.2f} s"
        f" + a task's start {start:.2f} s + {busy - count * start:.2f} task-seconds / N"
    ]
    for cores in (2, 4, 8, 16):
        estimate = driver + overhead + start + (busy - count * start) / cores
        lines.append(f"    {cores:>2} cores: ~{estimate:.1f} s")
    return "\n".join(lines)
