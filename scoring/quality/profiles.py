"""A small profile of a run's scores, kept while they are written, so the next day's checks
never read them back nor bin them again.

While a unit writes a run's scores chunk by chunk, a `ScoreProfile` counts:

- every finite score in a log-spaced sketch: one bucket per float exponent and first 8
  bits of mantissa, so a bucket spans less than 1/256 of the values in it. The sketches
  of the units of a split slice add up (`merge`), which exact deciles would not;
- the scores in the baseline's bins (the previous run's deciles, or the reference
  scores'), known when the unit starts: exact counts for today's PSI;
- the display histogram over [0, 1], exact, rows, non-finite scores, min and max.

After the commit, the profile's `summary` is stored on the run (`ScoringRun.profile`):

    {"rows": 100000, "missing": 0, "min": 0.012, "max": 0.97,
     "deciles": {"edges": [9 values], "counts": [10]},    # its own bins: tomorrow's baseline
     "percentiles": [101 values] | None,                  # its distribution, for other bins
     "display": [20 counts over [0, 1]] | None,           # None once a score left [0, 1]
     "against": {"edges": [...], "counts": [...]} | None} # its counts in the baseline's bins

Deciles from the sketch: each edge is the largest value of the bucket that holds the
exact decile, so it lies at or above it by less than 1/256 of its size (0.39%), and the
counts in those bins are exact: the PSI of two profiles is exactly the PSI of their
scores in those bins. A whole array (reference scores, scores read back) is summed up
exactly by `summarize`, with the deciles of `metrics.psi`.
"""

import base64
import math
import zlib

import numpy as np
import pyarrow as pa

DECILES = np.linspace(0, 1, 11)[1:-1]
PERCENTILES = np.linspace(0, 1, 101)
DISPLAY_BINS = 20
_MANTISSA_BITS = 8  # buckets 2^-8 of a power of two wide
_SHIFT = 52 - _MANTISSA_BITS


class Buckets:
    """Counts of positive magnitudes by bucket: a dense run of counts from `offset`."""

    def __init__(self, offset: int = 0, counts: np.ndarray | None = None):
        self.offset = offset
        self.counts = np.zeros(0, dtype=np.int64) if counts is None else counts

    def add(self, keys: np.ndarray) -> None:
        if keys.size:
            low = int(keys.min())
            self.add_counts(low, np.bincount(keys - low))

    def add_counts(self, offset: int, counts: np.ndarray) -> None:
        if not counts.size:
            return
        if not self.counts.size:
            self.offset, self.counts = offset, counts.astype(np.int64)
            return
        low = min(self.offset, offset)
        high = max(self.offset + self.counts.size, offset + counts.size)
        merged = np.zeros(high - low, dtype=np.int64)
        merged[self.offset - low : self.offset - low + self.counts.size] += self.counts
        merged[offset - low : offset - low + counts.size] += counts
        self.offset, self.counts = low, merged

    def to_json(self) -> dict:
        packed = zlib.compress(self.counts.astype("<i8").tobytes())
        return {"offset": self.offset, "counts": base64.b64encode(packed).decode()}

    @classmethod
    def from_json(cls, data: dict) -> "Buckets":
        raw = zlib.decompress(base64.b64decode(data["counts"]))
        return cls(data["offset"], np.frombuffer(raw, dtype="<i8").astype(np.int64))


def _keys(magnitudes: np.ndarray) -> np.ndarray:
    """A bucket key per |value|, increasing with it: its float bits, less the low mantissa
    (the absolute value again, so that -0.0 has no sign bit)."""
    return np.abs(magnitudes).view(np.int64) >> _SHIFT


def _largest(keys: np.ndarray) -> np.ndarray:
    """The largest magnitude each key holds (the next key's first float, less one ulp)."""
    return (((keys + 1) << _SHIFT) - 1).view(np.float64)


class ScoreProfile:
    """The profile of a run's scores, added to chunk by chunk (see the module docstring).

    `against` are the baseline's bin edges when known; None when the run has no baseline.
    """

    def __init__(self, against: list[float] | None = None):
        self.against = None if against is None else [float(e) for e in against]
        self.against_counts = np.zeros(len(self.against or []) + 1, dtype=np.int64)
        self.positive = Buckets()  # values >= 0
        self.negative = Buckets()  # |values| of values < 0
        self.rows = self.missing = 0
        self.low = math.inf
        self.high = -math.inf
        self.display: np.ndarray | None = np.zeros(DISPLAY_BINS, dtype=np.int64)

    def add(self, values) -> None:
        """Count a chunk of scores (a pyarrow or numpy array of numbers)."""
        scores = _floats(values)
        mask = np.isfinite(scores)
        finite = scores if mask.all() else scores[mask]
        self.rows += scores.size
        self.missing += scores.size - finite.size
        if not finite.size:
            return
        low, high = float(finite.min()), float(finite.max())
        self.low, self.high = min(self.low, low), max(self.high, high)
        negative = finite < 0
        if negative.any():
            self.negative.add(_keys(-finite[negative]))
            self.positive.add(_keys(finite[~negative]))
        else:
            self.positive.add(_keys(finite))
        if self.against is not None:
            self.against_counts += bin_counts(finite, np.array(self.against))
        if self.display is not None:
            if low >= 0.0 and high <= 1.0:
                self.display += display_counts(finite)
            else:
                self.display = None

    def merge(self, other: "ScoreProfile") -> None:
        """Add another part's profile of the same run. Its units count in the same baseline
        bins, unless the baseline changed between their starts: then in none."""
        if self.against != other.against:
            self.against = None
            self.against_counts = np.zeros(1, dtype=np.int64)
        else:
            self.against_counts += other.against_counts
        self.rows += other.rows
        self.missing += other.missing
        self.low, self.high = min(self.low, other.low), max(self.high, other.high)
        self.positive.add_counts(other.positive.offset, other.positive.counts)
        self.negative.add_counts(other.negative.offset, other.negative.counts)
        if self.display is None or other.display is None:
            self.display = None
        else:
            self.display += other.display

    def to_json(self) -> dict:
        """The whole profile, sketch included: what a unit keeps for its shard's committer."""
        return {
            "rows": self.rows,
            "missing": self.missing,
            "min": None if math.isinf(self.low) else self.low,
            "max": None if math.isinf(self.high) else self.high,
            "positive": self.positive.to_json(),
            "negative": self.negative.to_json(),
            "against": self.against,
            "against_counts": self.against_counts.tolist(),
            "display": None if self.display is None else self.display.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict) -> "ScoreProfile":
        profile = cls(data["against"])
        profile.rows, profile.missing = data["rows"], data["missing"]
        profile.low = math.inf if data["min"] is None else data["min"]
        profile.high = -math.inf if data["max"] is None else data["max"]
        profile.positive = Buckets.from_json(data["positive"])
        profile.negative = Buckets.from_json(data["negative"])
        profile.against_counts = np.array(data["against_counts"], dtype=np.int64)
        profile.display = None if data["display"] is None else np.array(data["display"])
        return profile

    def buckets(self) -> tuple[np.ndarray, np.ndarray]:
        """(largest value, count) of each non-empty bucket, in increasing order of value."""
        negative_keys = self.negative.offset + np.arange(self.negative.counts.size)
        positive_keys = self.positive.offset + np.arange(self.positive.counts.size)
        largest = np.concatenate(
            [
                # A negative bucket holds (-next key's first float, -its own first float].
                -(negative_keys << _SHIFT).view(np.float64)[::-1],
                _largest(positive_keys),
            ]
        )
        counts = np.concatenate([self.negative.counts[::-1], self.positive.counts])
        kept = counts > 0
        return largest[kept], counts[kept]

    def quantiles(self, levels: np.ndarray) -> np.ndarray:
        """At each level, the largest value of the bucket that holds the exact quantile
        (the order statistic np.quantile interpolates towards)."""
        largest, counts = self.buckets()
        ranks = np.ceil(levels * (counts.sum() - 1)).astype(np.int64)
        return largest[np.searchsorted(np.cumsum(counts), ranks, side="right")]

    def summary(self) -> dict:
        """What is stored on the run (shape in the module docstring)."""
        finite = self.rows - self.missing
        deciles = percentiles = None
        if finite:
            edges = np.unique(self.quantiles(DECILES))
            largest, counts = self.buckets()
            at_or_below = np.cumsum(counts)[np.searchsorted(largest, edges, side="right") - 1]
            deciles = {
                "edges": edges.tolist(),
                "counts": np.diff([0, *at_or_below.tolist(), finite]).tolist(),
            }
            # The top bucket's largest value may lie above the largest score.
            percentiles = _rounded(np.minimum(self.quantiles(PERCENTILES), self.high))
            percentiles[0], percentiles[-1] = self.low, self.high
        return _summary(
            rows=self.rows,
            missing=self.missing,
            low=self.low,
            high=self.high,
            deciles=deciles,
            percentiles=percentiles,
            display=self.display,
            against=self.against,
            against_counts=self.against_counts,
        )


def summarize(values, against: list[float] | None = None) -> dict:
    """The exact summary of a whole array of scores (deciles as `metrics.psi` cuts them)."""
    scores = _floats(values)
    finite = scores[np.isfinite(scores)]
    deciles = percentiles = display = None
    low, high = math.inf, -math.inf
    if finite.size:
        low, high = float(finite.min()), float(finite.max())
        edges = decile_edges(finite)
        deciles = {"edges": edges.tolist(), "counts": bin_counts(finite, edges).tolist()}
        percentiles = _rounded(np.quantile(finite, PERCENTILES))
        percentiles[0], percentiles[-1] = low, high
        if low >= 0.0 and high <= 1.0:
            display = display_counts(finite)
    else:
        display = np.zeros(DISPLAY_BINS, dtype=np.int64)
    against_counts = None
    if against is not None:
        against_counts = bin_counts(finite, np.array(against, dtype=np.float64))
    return _summary(
        rows=scores.size,
        missing=scores.size - finite.size,
        low=low,
        high=high,
        deciles=deciles,
        percentiles=percentiles,
        display=display,
        against=against,
        against_counts=against_counts,
    )


def _summary(*, rows, missing, low, high, deciles, percentiles, display, against, against_counts):
    return {
        "rows": int(rows),
        "missing": int(missing),
        "min": None if math.isinf(low) else float(low),
        "max": None if math.isinf(high) else float(high),
        "deciles": deciles,
        "percentiles": percentiles,
        "display": None if display is None else [int(x) for x in display],
        "against": None
        if against is None
        else {"edges": [float(e) for e in against], "counts": [int(x) for x in against_counts]},
    }


def display_counts(probabilities: np.ndarray) -> np.ndarray:
    """Counts in DISPLAY_BINS equal bins over [0, 1], the last one closed (as np.histogram,
    at a third of its cost)."""
    bins = np.minimum((probabilities * DISPLAY_BINS).astype(np.int64), DISPLAY_BINS - 1)
    return np.bincount(bins, minlength=DISPLAY_BINS)


def decile_edges(finite: np.ndarray) -> np.ndarray:
    """The inner edges of 10 bins at the quantiles of `finite` values, equal edges merged."""
    return np.unique(np.quantile(finite, DECILES))


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """How many `values` fall in each bin (-inf, e0], (e0, e1], ..., (e_last, inf)."""
    # Counting x <= edge per edge is ~10x faster than searchsorted + bincount for a few
    # edges over a million values.
    at_or_below = [np.count_nonzero(values <= edge) for edge in edges]
    return np.diff(np.array([0, *at_or_below, values.size]))


def psi_of_shares(expected: np.ndarray, actual: np.ndarray, epsilon: float = 1e-4) -> float:
    """sum((a - e) * ln(a / e)), an empty bin counted as `epsilon` share."""
    expected = np.where(expected > 0, expected, epsilon)
    actual = np.where(actual > 0, actual, epsilon)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


# --- comparing two summaries ----------------------------------------------------


def finite_count(summary: dict) -> int:
    return summary["rows"] - summary["missing"]


def psi(baseline: dict, current: dict) -> float:
    """PSI of the current run's scores in the baseline's decile bins, as `metrics.psi`.

    Exact when the current run was counted in those bins while it was written; otherwise
    (its baseline changed since) its counts come from its percentiles, within a
    percentile's share per bin. NaN when a side has no finite score.
    """
    if not finite_count(baseline) or not finite_count(current):
        return math.nan
    edges = baseline["deciles"]["edges"]
    expected = np.array(baseline["deciles"]["counts"]) / finite_count(baseline)
    counted = current["against"]
    if counted is not None and counted["edges"] == edges:
        actual = np.array(counted["counts"]) / finite_count(current)
    else:
        actual = np.diff([0.0, *cumulative_share(current, edges), 1.0])
    return psi_of_shares(expected, actual)


def cumulative_share(summary: dict, points) -> list[float]:
    """The share of the finite scores at or below each point, from the percentiles
    (linear between two percentiles)."""
    levels = summary["percentiles"]
    shares = []
    for point in points:
        above = int(np.searchsorted(levels, point, side="right"))
        if above == 0:
            shares.append(0.0)
        elif above == len(levels):
            shares.append(1.0)
        else:
            low, high = levels[above - 1], levels[above]
            shares.append((above - 1 + (point - low) / (high - low)) / (len(levels) - 1))
    return shares


def display_histogram(baseline: dict | None, current: dict) -> dict:
    """`metrics.display_histogram` of two summaries: exact over [0, 1] when both sides are
    probabilities, from their percentiles over a common range otherwise."""
    sides = [current] if baseline is None else [current, baseline]
    present = [side for side in sides if finite_count(side)]
    lo = min((side["min"] for side in present), default=0.0)
    hi = max((side["max"] for side in present), default=1.0)
    if lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    elif lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, DISPLAY_BINS + 1)

    def shares(side: dict) -> list[float]:
        total = max(finite_count(side), 1)
        if (lo, hi) == (0.0, 1.0) and side["display"] is not None:
            counts = np.array(side["display"]) / total
        elif not finite_count(side):
            counts = np.zeros(DISPLAY_BINS)
        else:
            counts = np.diff([0.0, *cumulative_share(side, edges[1:-1]), 1.0])
        return [round(float(x), 5) for x in counts]

    return {
        "edges": [round(float(x), 6) for x in edges],
        "current": shares(current),
        "baseline": shares(baseline) if baseline is not None else None,
    }


def _floats(values) -> np.ndarray:
    if isinstance(values, pa.Array | pa.ChunkedArray):  # nulls become NaN
        values = values.to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float64).ravel()


def _rounded(values: np.ndarray) -> list[float]:
    return [float(f"{x:.7g}") for x in values]
