"""Quantize + dequantize of one Pythia-14m-sized update per scheme, beside a float32 copy.

The update has Pythia-14m's 76 tensor shapes (14,067,712 parameters), seeded normal values
scaled like a training update. Each scheme is timed alternately with a
copy (bench/common.paired_times); prints both medians, the median ratio and the payload
against float32. Target (issue 4): every scheme within 5x of the copy on CPU.

    python bench/bench_quant.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import paired_times, pythia_14m_shapes  # noqa: E402
from fedcodec import quant  # noqa: E402
from fedcodec.quant import QuantSpec  # noqa: E402

SCHEMES = {
    "uniform 8 bits": QuantSpec("uniform", bits=8),
    "uniform 4 bits": QuantSpec("uniform", bits=4),
    "uniform 2 bits": QuantSpec("uniform", bits=2),
    "uniform 4 bits, stochastic": QuantSpec("uniform", bits=4, stochastic=True),
    "fixed 4 bits (+ sign)": QuantSpec("fixed", bits=4),
    "progressive 2 + 6": QuantSpec("progressive", base_bits=2, refine_bits=6),
    "float e4m3": QuantSpec("float", exponent_bits=4, mantissa_bits=3),
    "float e5m2": QuantSpec("float", exponent_bits=5, mantissa_bits=2),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    shapes = pythia_14m_shapes()
    rng = np.random.default_rng(0)
    update = [(1e-3 * rng.normal(size=shape)).astype(np.float32) for shape in shapes]
    dense_bits = 32 * sum(t.size for t in update)

    def copy() -> None:
        [t.copy() for t in update]

    print(f"{dense_bits // 32:,} parameters in {len(shapes)} tensors; median of {args.repeats}")
    print(f"{'':30}{'seconds':>10}{'copy s':>10}{'x copy':>10}{'payload B':>14}{'x smaller':>11}")
    for label, spec in SCHEMES.items():

        def round_trip(spec: QuantSpec = spec) -> None:
            encoded = quant.encode(update, spec, np.random.default_rng(1))
            quant.decode(encoded, shapes, spec)

        copy_s, seconds, ratio = paired_times(copy, round_trip, args.repeats)
        bits = quant.encode(update, spec, np.random.default_rng(1)).payload_bits
        print(
            f"{label:30}{seconds:>10.4f}{copy_s:>10.4f}{ratio:>10.2f}"
            f"{bits // 8:>14,}{dense_bits / bits:>11.2f}"
        )


if __name__ == "__main__":
    main()
