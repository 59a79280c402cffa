"""STC encode + decode of one Pythia-14m-sized update beside a plain float32 copy.

The update has the tensor shapes of a GPT-NeoX with hidden 128, 6 layers, intermediate 512 and
vocabulary 50304 (14,067,712 parameters), filled with seeded normal values. Each is timed
alternately with a copy; prints both medians and the median ratio. Target (issue 3):
approximate STC within 10x of the copy.

    python bench/bench_stc.py [--p 0.01] [--approx 0.01] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import paired_times, pythia_14m_shapes  # noqa: E402
from fedcodec import stc  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--p", type=float, default=0.01)
    parser.add_argument("--approx", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    shapes = pythia_14m_shapes()
    rng = np.random.default_rng(0)
    update = [rng.normal(size=shape).astype(np.float32) for shape in shapes]
    total = sum(t.size for t in update)

    def copy() -> None:
        [t.copy() for t in update]

    def round_trip(approx: float) -> None:
        encoded = stc.encode(update, args.p, approx=approx, rng=np.random.default_rng(1))
        stc.decode(encoded, shapes)

    runs = {
        "STC exact top-k (encode+decode)": 1.0,
        f"STC approx {args.approx} (encode+decode)": args.approx,
    }
    encoded = stc.encode(update, args.p)
    print(f"{total:,} parameters in {len(shapes)} tensors, p = {args.p}; median of {args.repeats}")
    print(f"{'':34}{'seconds':>10}{'copy s':>10}{'x copy':>10}")
    for label, approx in runs.items():
        copy_s, seconds, ratio = paired_times(copy, lambda a=approx: round_trip(a), args.repeats)
        print(f"{label:34}{seconds:>10.4f}{copy_s:>10.4f}{ratio:>10.2f}")
    print(
        f"payload {encoded.payload_bits / 8:,.0f} B vs {4 * total:,} B float32: "
        f"{4 * total * 8 / encoded.payload_bits:.1f}x smaller"
    )


if __name__ == "__main__":
    main()
