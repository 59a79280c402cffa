"""Encode + decode of one Pythia-14m-sized update by every uplink plugin, beside a copy.

The update has Pythia-14m's 76 tensor shapes (14,067,712 parameters), seeded normal values
scaled like a training update. Each plugin (protocol/codecs.py) is timed alternately with a
float32 copy of the update (bench.common.paired_times); prints both medians, the median
ratio and the payload against float32. Target (issue 30): <= 3x the copy for element-wise
codecs.

    python -m bench.plugins [--repeats 3]
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.common import paired_times, pythia_14m_shapes
from protocol import codecs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shapes = pythia_14m_shapes()
    rng = np.random.default_rng(0)
    update = [(1e-3 * rng.normal(size=shape)).astype(np.float32) for shape in shapes]
    dense_bits = 32 * sum(t.size for t in update)

    def copy() -> None:
        [t.copy() for t in update]

    print(f"{dense_bits // 32:,} parameters in {len(shapes)} tensors; median of {args.repeats}")
    print(f"{'':14}{'seconds':>10}{'copy s':>10}{'x copy':>10}{'payload B':>14}{'x smaller':>11}")
    for name in codecs.names():
        codec = codecs.registered(name)

        def round_trip(codec: codecs.UplinkCodec = codec) -> None:
            encoded = codec.encode(update, np.random.default_rng(1))
            codec.decode(encoded.arrays, shapes)

        round_trip()  # compiles the numba loops outside the timing
        copy_s, seconds, ratio = paired_times(copy, round_trip, args.repeats)
        bits = codec.encode(update, np.random.default_rng(1)).payload_bits
        print(
            f"{name:14}{seconds:>10.4f}{copy_s:>10.4f}{ratio:>10.2f}"
            f"{bits // 8:>14,}{dense_bits / bits:>11.2f}"
        )


if __name__ == "__main__":
    main()
