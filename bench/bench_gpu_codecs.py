"""STC and quantizer round trips of one Pythia-14m-sized update as device tensors.

Issues 3 and 4 ask for the codec benchmarks on a GPU. The codecs in `fedcodec/` run on the CPU;
this script ports them to torch (top-k + Golomb-Rice positions + signs for STC; the uniform,
fixed, progressive and minifloat codes with their bit packing, nearest rounding only) and first
checks that the port writes the same bytes as `fedcodec` for the same update. Then it times
encode + decode on the device beside one float32 copy of the update on the device (CUDA
events, median of --repeats). `--device cpu` checks the port without a GPU.

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


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """fedcodec.bitpack.pack_codes: k-bit codes back to back, most significant bit first."""
    if 8 % bits:  # widths that straddle bytes: through the bits themselves
        shifts = torch.arange(bits - 1, -1, -1, device=codes.device)
        return packbits(((codes[:, None] >> shifts) & 1).reshape(-1).to(torch.uint8))
    per = 8 // bits
    columns = torch.nn.functional.pad(codes, (0, -codes.numel() % per)).reshape(-1, per)
    shifts = bits * torch.arange(per - 1, -1, -1, device=codes.device)
    return (columns << shifts).sum(1, dtype=torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    if 8 % bits:
        weights = 1 << torch.arange(bits - 1, -1, -1, device=packed.device)
        stream = unpackbits(packed)[: count * bits].reshape(count, bits)
        return (stream * weights).sum(1, dtype=torch.uint8)
    per = 8 // bits
    shifts = bits * torch.arange(per - 1, -1, -1, device=packed.device)
    return ((packed[:, None] >> shifts) & ((1 << bits) - 1)).reshape(-1)[:count]


def uniform_codes(tensors: list[torch.Tensor], bits: int) -> tuple[torch.Tensor, ...]:
    """fedcodec.quant's uniform codes (nearest) on torch tensors: codes, lows, steps."""
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
    return codes, lows, steps


def uniform_values(codes: torch.Tensor, lows, steps, shapes: list) -> list:
    """Values of whole codes, tensor by tensor."""
    values = codes.float()
    tensors, start = [], 0
    for shape, low, step in zip(shapes, lows, steps, strict=True):
        size = math.prod(shape)
        tensors.append((values[start : start + size] * step + low).reshape(shape))
        start += size
    return tensors


def uniform_encode(tensors: list[torch.Tensor], bits: int) -> dict[str, torch.Tensor]:
    codes, lows, steps = uniform_codes(tensors, bits)
    return {"codes": pack_codes(codes, bits), "lows": lows, "steps": steps}


def uniform_decode(arrays: dict[str, torch.Tensor], shapes: list, bits: int) -> list:
    count = sum(math.prod(shape) for shape in shapes)
    codes = unpack_codes(arrays["codes"], bits, count)
    return uniform_values(codes, arrays["lows"], arrays["steps"], shapes)


def progressive_encode(tensors: list[torch.Tensor], base: int, refine: int) -> dict:
    codes, lows, steps = uniform_codes(tensors, base + refine)
    return {
        "base": pack_codes(codes >> refine, base),
        "refine": pack_codes(codes & ((1 << refine) - 1), refine),
        "lows": lows,
        "steps": steps,
    }


def progressive_decode(arrays: dict, shapes: list, base: int, refine: int) -> list:
    count = sum(math.prod(shape) for shape in shapes)
    codes = unpack_codes(arrays["base"], base, count) << refine
    codes |= unpack_codes(arrays["refine"], refine, count)
    return uniform_values(codes, arrays["lows"], arrays["steps"], shapes)


def fixed_encode(tensors: list[torch.Tensor], bits: int) -> dict[str, torch.Tensor]:
    """fedcodec.quant fixed (truncating) on torch tensors: signs and codes."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    codes = (flat.abs() * (1 << bits)).clamp(max=(1 << bits) - 1).to(torch.uint8)
    return {"signs": packbits((flat < 0).to(torch.uint8)), "codes": pack_codes(codes, bits)}


def fixed_decode(arrays: dict[str, torch.Tensor], shapes: list, bits: int) -> list:
    count = sum(math.prod(shape) for shape in shapes)
    values = unpack_codes(arrays["codes"], bits, count).float() * 2.0**-bits
    values = torch.where(unpackbits(arrays["signs"])[:count] == 1, -values, values)
    return list(torch.split(values, [math.prod(s) for s in shapes]))


def float_encode(tensors: list[torch.Tensor], e: int, m: int) -> dict[str, torch.Tensor]:
    """fedcodec.quant float (nearest, ties to even) on torch tensors: codes and offsets."""
    low, shift = -((1 << e) - 2), 23 - m
    largest = torch.stack([t.abs().max() for t in tensors])
    tops = torch.where(largest > 0, torch.frexp(largest).exponent - 1, 0)
    codes = []
    for tensor, top in zip(tensors, tops.tolist(), strict=True):
        flat = tensor.reshape(-1)
        scaled = torch.ldexp(flat.abs(), torch.tensor(-top, device=flat.device))
        pattern = scaled.view(torch.int32)
        rebias = (126 + low) << 23
        normal = (pattern + ((pattern >> shift) & 1) + (1 << shift >> 1) - 1 - rebias) >> shift
        subnormal = torch.round(scaled * 2.0 ** (m - low)).to(torch.int32)  # half to even
        code = torch.where(
            pattern < (127 + low) << 23,
            subnormal.clamp(max=1 << m),
            normal.clamp(max=(1 << (e + m)) - 1),
        )
        codes.append(code | ((flat.view(torch.int32) < 0).to(torch.int32) << (e + m)))
    return {
        "codes": pack_codes(torch.cat(codes).to(torch.uint8), 1 + e + m),
        "offsets": (tops + low).to(torch.int32),
    }


def float_decode(arrays: dict[str, torch.Tensor], shapes: list, e: int, m: int) -> list:
    count = sum(math.prod(shape) for shape in shapes)
    codes = unpack_codes(arrays["codes"], 1 + e + m, count).to(torch.int32)
    patterns = ((codes & ((1 << (e + m)) - 1)) << (23 - m)) | ((codes >> (e + m)) << 31)
    values = patterns.view(torch.float32)
    tensors, start = [], 0
    for shape, offset in zip(shapes, arrays["offsets"].tolist(), strict=True):
        size = math.prod(shape)
        scale = torch.tensor(126 + offset, device=values.device)
        tensors.append(torch.ldexp(values[start : start + size], scale).reshape(shape))
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
    cases["fixed 4 bits (+ sign)"] = (
        lambda: fixed_decode(fixed_encode(on_device, 4), shapes, 4),
        lambda: fixed_encode(on_device, 4),
        quant.encode(update, QuantSpec("fixed", bits=4)).arrays,
    )
    cases["progressive 2 + 6"] = (
        lambda: progressive_decode(progressive_encode(on_device, 2, 6), shapes, 2, 6),
        lambda: progressive_encode(on_device, 2, 6),
        quant.encode(update, QuantSpec("progressive", base_bits=2, refine_bits=6)).arrays,
    )
    for e, m in ((4, 3), (5, 2)):
        cases[f"float e{e}m{m}"] = (
            lambda e=e, m=m: float_decode(float_encode(on_device, e, m), shapes, e, m),
            lambda e=e, m=m: float_encode(on_device, e, m),
            quant.encode(update, QuantSpec("float", exponent_bits=e, mantissa_bits=m)).arrays,
        )
    for label, (round_trip, encode, reference) in cases.items():
        seconds = device_median(round_trip, args.repeats, device)
        print(
            f"{label:24}{seconds:>10.5f}{seconds / copy_s:>9.2f}  {same_bytes(encode(), reference)}"
        )


if __name__ == "__main__":
    main()
