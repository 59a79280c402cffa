"""QSFL's model segments ("frames"): a flat model cut into S contiguous, near-equal parts.

Client c uploads segment (c + round) mod S of its update; the server averages each segment
over the clients that sent it and leaves a segment nobody sent unchanged.
"""

from __future__ import annotations

import numpy as np


def segment_bounds(size: int, num_segments: int) -> list[tuple[int, int]]:
    """(start, stop) of each segment; the first size % S segments hold one entry more."""
    if not 1 <= num_segments <= size:
        raise ValueError(f"num_segments={num_segments} is out of range; allowed: 1..{size}")
    base, extra = divmod(size, num_segments)
    stops = np.cumsum([base + (i < extra) for i in range(num_segments)])
    return [(int(stop - base - (i < extra)), int(stop)) for i, stop in enumerate(stops)]


def segment_id(partition_id: int, server_round: int, num_segments: int) -> int:
    """The segment a client uploads in a round: (partition_id + round) mod S."""
    return (partition_id + server_round) % num_segments


def average_segments(
    size: int, num_segments: int, sent: list[tuple[int, np.ndarray, float]]
) -> tuple[np.ndarray, np.ndarray]:
    """Stitch segments into one flat update: each the weighted mean of those who sent it.

    Parameters
    ----------
    sent : list of (segment id, values, weight)
        One entry per upload; a segment nobody sent stays zero (the global values are kept).

    Returns
    -------
    update : float32 array of `size` entries, and senders : int array, uploads per segment.
    """
    bounds = segment_bounds(size, num_segments)
    sums = np.zeros(size, dtype=np.float64)
    weights = np.zeros(num_segments, dtype=np.float64)
    senders = np.zeros(num_segments, dtype=np.int64)
    for segment, values, weight in sent:
        start, stop = bounds[segment]
        if values.shape != (stop - start,):
            raise ValueError(f"segment {segment} has {values.size} entries, not {stop - start}")
        sums[start:stop] += weight * values
        weights[segment] += weight
        senders[segment] += 1
    for segment, (start, stop) in enumerate(bounds):
        if weights[segment] > 0:
            sums[start:stop] /= weights[segment]
    return sums.astype(np.float32), senders
