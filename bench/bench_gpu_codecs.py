"""STC and uniform k-bit round trips of one Pythia-14m-sized update as device tensors.

Issues 3 and 4 ask for the codec benchmarks on a GPU. The codecs in `fedcodec/` are numpy;
this script ports their two hot paths to torch (top-k + Golomb-Rice positions + signs for STC,
uniform codes + bit packing for k-bit) and first checks that the port writes the same bytes
as `fedcodec` for the same update. Then it times encode + decode on the device beside one
float32 copy of the update on the device (CUDA events, median of --repeats).

    python bench/bench_gpu_codecs.py [--device cuda] [--repeats 20]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import pythia_14m_shapes  # noqa: E402
from fedcodec import quant, stc  # noqa: E402
from fedcodec.golomb import rice_parameter  # noqa: E402
from fedcodec.quant import QuantSpec  # noqa: E402

MSB_FIRST = torch.arange(7, -1, -1)


def packbits(bits: torch.Tensor) -> torch.Tensor:
    """np.packbits of a 0/1 uint8 tensor."""
    padded = torch.nn.functional.pad(bits, (0, -bits.numel() % 8)).reshape(-1, 8)
    return (padded << MSB_FIRST.to(bits.device)).sum(1, dtype=torch.uint8)


def unpackbits(packed: torch.Tensor) -> torch.Tensor:
    return ((packed[:, None] >> MSB_FIRST.to(packed.device)) & 1).reshape(-1)


def stc_encode(tensors: list[torch.Tensor], p: float) -> dict[str, torch.Tensor]:
    """fedcodec.stc.encode (exact top-k) on torch tensors: bits, counts, means."""
    streams, counts, means = [], [], []
    for tensor in tensors:
        flat = tensor.reshape(-1)
        magnitudes = flat.abs()
        kept = torch.topk(magnitudes, min(flat.numel(), math.ceil(p * flat.numel())))
        positions = kept.indices[kept.values > 0].sort().values
        b = rice_parameter(positions.numel() / flat.numel())
        gaps = torch.diff(positions, prepend=positions.new_tensor([-1])) - 1
        quotients = gaps >> b
        unary = int(quotients.sum()) + positions.numel()
        bits = torch.ones(unary + b * positions.numel(), dtype=torch.uint8, device=flat.device)
        bits[torch.cumsum(quotients + 1, 0) - 1] = 0
        if b:
            shifts = torch.arange(b - 1, -1, -1, device=flat.device)
            bits[unary:] = ((gaps[:, None] >> shifts) & 1).reshape(-1).to(torch.uint8)
        streams += [bits, (flat[positions] < 0).to(torch.uint8)]
        counts.append(positions.numel())
        means.append(magnitudes[positions].mean())
    return {
        "bits": packbits(torch.cat(streams)),
        "counts": torch.tensor(counts, dtype=torch.int64),
        "means": torch.stack(means),
    }


def stc_decode(arrays: dict[str, torch.Tensor], shapes: list[tuple[int, ...]]) -> list:
    bits, offset, tensors = unpackbits(arrays["bits"]), 0, []
    for shape, count, mean in zip(shapes, arrays["counts"].tolist(), arrays["means"], strict=True):
        size = math.prod(shape)
        b = rice_parameter(count / size)
        window = bits[offset : offset + count + (size >> b) + 1]
        ends = torch.nonzero(window == 0).squeeze(1)[:count]
        unary = int(ends[-1]) + 1
        quotients = torch.diff(ends, prepend=ends.new_tensor([-1])) - 1
        tail = bits[offset + unary : offset + unary + b * count].reshape(count, b).long()
        weights = 1 << torch.arange(b - 1, -1, -1, device=bits.device)
        positions = torch.cumsum((quotients << b) + (tail * weights).sum(1) + 1, 0) - 1
        offset += unary + b * count
        signs = bits[offset : offset + count]
        offset += count
        flat = torch.zeros(size, device=bits.device)
        flat[positions] = torch.where(signs == 1, -mean, mean)
        tensors.append(flat.reshape(shape))
    return tensors


def uniform_encode(tensors: list[torch.Tensor], bits: int) -> dict[str, torch.Tensor]:
    """fedcodec.quant uniform (nearest) on torch tensors: packed codes, lows, steps."""
    top = (1 << bits) - 1
    lows = torch.stack([t.min() for t in tensors])
    # a tensor divisor: CUDA divides by a Python number as a multiplication by its reciprocal
    steps = (torch.stack([t.max() for t in tensors]) - lows) / torch.full_like(lows, top)
    codes = torch.cat(
        [
            ((t.reshape(-1) - low) / step + 0.5).clamp(0, top).to(torch.uint8)
            for t, low, step in zip(tensors, lows, steps, strict=True)
        ]
    )
    per = 8 // bits
    columns = torch.nn.functional.pad(codes, (0, -codes.numel() % per)).reshape(-1, per)
    shifts = bits * torch.arange(per - 1, -1, -1, device=codes.device)
    return {"codes": (columns << shifts).sum(1, dtype=torch.uint8), "lows": lows, "steps": steps}


def uniform_decode(arrays: dict[str, torch.Tensor], shapes: list, bits: int) -> list:
    per, mask = 8 // bits, (1 << bits) - 1
    shifts = bits * torch.arange(per - 1, -1, -1, device=arrays["codes"].device)
    codes = ((arrays["codes"][:, None] >> shifts) & mask).reshape(-1)
    tensors, start = [], 0
    for shape, low, step in zip(shapes, arrays["lows"], arrays["steps"], strict=True):
        size = math.prod(shape)
        tensors.append((codes[start : start + size].float() * step + low).reshape(shape))
        start += size
    return tensors


def same_bytes(ours: dict[str, torch.Tensor], reference: dict[str, np.ndarray]) -> str:
    """How the port's arrays compare with fedcodec's: identical, or what differs."""
    report = []
    for name, expected in reference.items():
        got = ours[name].cpu().numpy()
        if got.shape != expected.shape:
            report.append(f"{name}: shape {got.shape} vs {expected.shape}")
        elif not np.array_equal(got.astype(expected.dtype), expected):
            got = got.astype(expected.dtype)
            differ = f"{name}: {np.count_nonzero(got != expected)} of {expected.size} differ"
            if expected.dtype.kind == "f":  # float32 sums in another order
                relative = np.max(np.abs(got - expected) / np.abs(expected).clip(1e-30))
                differ += f" by at most {relative:.1e} (relative)"
            report.append(differ)
    return "identical to fedcodec" if not report else "; ".join(report)


def device_median(action, repeats: int, device: torch.device) -> float:
    action()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            action()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            start_s = time.perf_counter()
            action()
            times.append(time.perf_counter() - start_s)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    shapes = pythia_14m_shapes()
    rng = np.random.default_rng(0)
    update = [(1e-3 * rng.normal(size=shape)).astype(np.float32) for shape in shapes]
    on_device = [torch.from_numpy(t).to(device) for t in update]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{sum(t.size for t in update):,} parameters in {len(shapes)} tensors on {name}")
    copy_s = device_median(lambda: [t.clone() for t in on_device], args.repeats, device)
    print(f"{'':24}{'seconds':>10}{'x copy':>9}  bytes")
    print(f"{'float32 copy':24}{copy_s:>10.5f}{1:>9.2f}")
    cases = {
        "STC p = 0.01": (
            lambda: stc_decode(stc_encode(on_device, 0.01), shapes),
            lambda: stc_encode(on_device, 0.01),
            stc.encode(update, 0.01).arrays,
        ),
    }
    for bits in (8, 4, 2):
        cases[f"uniform {bits} bits"] = (
            lambda bits=bits: uniform_decode(uniform_encode(on_device, bits), shapes, bits),
            lambda bits=bits: uniform_encode(on_device, bits),
            quant.encode(update, QuantSpec("uniform", bits=bits)).arrays,
        )
    for label, (round_trip, encode, reference) in cases.items():
        seconds = device_median(round_trip, args.repeats, device)
        print(
            f"{label:24}{seconds:>10.5f}{seconds / copy_s:>9.2f}  {same_bytes(encode(), reference)}"
        )


if __name__ == "__main__":
    main()
