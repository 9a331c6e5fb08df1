"""What the benches read of the engine's own account of a batch, in its workers' logs:
the phases of a slice ("slice D, N runs in T s: load a s, read b s, ...") or of each
part of it ("part i of batch B: T s: load a s, ..."), and the quality checks' wall time."""

import re

PHASE = re.compile(r"(\w+) (\d+(?:\.\d+)?) s")
UNIT = re.compile(r"\] (?:part|unit|shard) (\S+) of batch (\d+)\S*: (\d+(?:\.\d+)?) s")


def phases(lines: list[str], batch_id: int) -> str:
    """The batch's phases as logged: "slice ..., N runs in 5 s: load 0.1 s, ..." for a slice
    scored whole, one "part i: load ..." per part for a split one."""
    parts = sorted(
        line.split("] ", 1)[-1].replace(f" of batch {batch_id}", "")
        for line in lines
        if f" of batch {batch_id}: " in line and UNIT.search(line)
    )
    if parts:
        return "; ".join(parts)
    whole = [line for line in lines if " runs in " in line and "] slice " in line]
    return "slice " + whole[-1].split(" runs in ", 1)[1] if whole else "(not logged)"


def phase_seconds(lines: list[str]) -> dict[str, float]:
    """Seconds per phase of the last slice scored whole ({} when none was logged)."""
    whole = [line for line in lines if " runs in " in line and "] slice " in line]
    if not whole:
        return {}
    logged = whole[-1].split(" runs in ", 1)[1].split(": ", 1)[-1]
    return {name: float(seconds) for name, seconds in PHASE.findall(logged)}


def unit_seconds(lines: list[str], batch_id: int) -> list[float]:
    """Wall time of each unit (part, shard) of the batch the engine logged ([] when none)."""
    found = []
    for line in lines:
        match = UNIT.search(line)
        if match and int(match.group(2)) == batch_id:
            found.append(float(match.group(3)))
    return found


def check_seconds(lines: list[str]) -> float:
    """Wall time of the batch's quality checks (runs are checked side by side, so not the
    sum of each run's "seconds")."""
    checked = [line for line in lines if "] checked " in line and " runs in " in line]
    return float(checked[-1].rsplit(" runs in ", 1)[1].split()[0]) if checked else 0.0
