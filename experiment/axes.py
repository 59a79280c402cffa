"""The axes of an experiment: aggregation, uplink codec, downlink codec, client selection.

`strategy` names either one of Flower's aggregation strategies (the others axes then come from
`uplink`, `downlink` and `selection`) or a preset, a shorthand for a point on all four axes
(`stc` = FedAvg + STC up + STC down). `aggregation.*` holds the aggregation's own parameters;
"" leaves one at Flower's default. Every function here is pure: it returns the problem with a
setting as one line ("" when there is none), for the config's validation to raise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

AGGREGATIONS = (
    "fedavg",
    "fedavgm",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "fedmedian",
    "fedtrimmedavg",
    "krum",
    "multikrum",
    "bulyan",
    "qfedavg",
)
# aggregations whose step starts from FedAvg's weighted mean of the replies: a codec may hand
# them that mean, summed as the replies are decoded, as one reply (the others get every model)
MEAN_RULES = ("fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedadagrad")
PRESETS = ("stc", "topk", "quant", "qsfl")
UPLINKS = ("none", "stc", "topk", "quant", "segments")
DOWNLINKS = ("none", "stc", "quant")
SELECTIONS = ("uniform", "qsfl")

# aggregation.<key>: (which strategies take it, lowest, highest, whether the bounds are open,
# whether it is an integer)
_OPEN, _CLOSED = True, False
PARAMETERS: dict[str, tuple[tuple[str, ...], float, float, bool, bool]] = {
    "proximal-mu": (("fedprox",), 0.0, math.inf, _CLOSED, False),
    "server-learning-rate": (("fedavgm",), 0.0, math.inf, _OPEN, False),
    "server-momentum": (("fedavgm",), 0.0, 1.0, _CLOSED, False),
    "eta": (("fedadam", "fedyogi", "fedadagrad"), 0.0, math.inf, _OPEN, False),
    "eta-l": (("fedadam", "fedyogi", "fedadagrad"), 0.0, math.inf, _OPEN, False),
    "beta-1": (("fedadam", "fedyogi"), 0.0, 1.0, _CLOSED, False),
    "beta-2": (("fedadam", "fedyogi"), 0.0, 1.0, _CLOSED, False),
    "tau": (("fedadam", "fedyogi", "fedadagrad"), 0.0, math.inf, _OPEN, False),
    "beta": (("fedtrimmedavg",), 0.0, 0.5, _CLOSED, False),
    "num-malicious-nodes": (("krum", "multikrum", "bulyan"), 0, math.inf, _CLOSED, True),
    "num-nodes-to-select": (("multikrum",), 1, math.inf, _CLOSED, True),
    "q": (("qfedavg",), 0.0, math.inf, _CLOSED, False),
    "client-learning-rate": (("qfedavg",), 0.0, math.inf, _OPEN, False),
}


@dataclass(frozen=True)
class Axes:
    """One point on the four axes."""

    aggregation: str
    uplink: str = "none"
    downlink: str = "none"
    selection: str = "uniform"

    @property
    def dense(self) -> bool:
        """Nothing compressed, every client sends the whole model: Flower's own baseline."""
        return (self.uplink, self.downlink, self.selection) == ("none", "none", "uniform")


def preset_axes(preset: str, quant_down_bits: int, qsfl_quantize: bool) -> Axes:
    """The point a preset stands for."""
    return {
        "stc": Axes("fedavg", "stc", "stc"),
        "topk": Axes("fedavg", "topk"),
        "quant": Axes("fedavg", "quant", "quant" if quant_down_bits else "none"),
        "qsfl": Axes("fedavg", "quant" if qsfl_quantize else "segments", selection="qsfl"),
    }[preset]


def resolve_axes(
    strategy: str,
    uplink: str,
    downlink: str,
    selection: str,
    quant_down_bits: int,
    qsfl_quantize: bool,
) -> Axes:
    """The axes a run-config asks for (a preset expanded)."""
    if strategy in PRESETS:
        return preset_axes(strategy, quant_down_bits, qsfl_quantize)
    return Axes(strategy, uplink, downlink, selection)


def preset_problem(strategy: str, uplink: str, downlink: str, selection: str) -> str:
    """A preset with an axis set beside it (the preset already sets every axis)."""
    given = {"uplink": uplink, "downlink": downlink, "selection": selection}
    defaults = {"uplink": "none", "downlink": "none", "selection": "uniform"}
    changed = [f"{key}='{value}'" for key, value in given.items() if value != defaults[key]]
    if strategy in PRESETS and changed:
        return (
            f"strategy='{strategy}' is a preset that sets uplink, downlink and selection "
            f"itself; with {', '.join(changed)} give an aggregation instead, e.g. "
            f"strategy='fedavg' {' '.join(changed)}"
        )
    return ""


def combination_problem(axes: Axes, quant_down_bits: int, qsfl_quantize: bool) -> str:
    """Axes that cannot work together, and why."""
    up, down, selection = axes.uplink, axes.downlink, axes.selection
    if (up == "stc") != (down == "stc"):
        return (
            f"uplink='{up}' with downlink='{down}': STC runs on both links (clients apply the "
            "server's compressed deltas to their own copy); allowed: uplink='stc' "
            "downlink='stc', or neither"
        )
    if down == "quant" and (up != "quant" or not quant_down_bits):
        return (
            f"downlink='quant' needs uplink='quant' and quant.down-bits in 1..8 (got uplink="
            f"'{up}', quant.down-bits={quant_down_bits})"
        )
    if up == "quant" and selection == "uniform" and quant_down_bits and down != "quant":
        return (
            f"quant.down-bits={quant_down_bits} quantizes the downlink: set downlink='quant', "
            "or quant.down-bits=0 for a dense downlink"
        )
    if (up == "segments") != (selection == "qsfl") and up != "quant":
        return (
            f"uplink='{up}' with selection='{selection}': QSFL's one-segment uploads go with "
            "its selection; allowed: selection='qsfl' with uplink='segments' or 'quant'"
        )
    if selection == "qsfl":
        if down != "none":
            return f"selection='qsfl' sends the model dense; allowed: downlink='none', not '{down}'"
        if axes.aggregation not in MEAN_RULES:
            return (
                f"selection='qsfl' stitches segments by their weighted mean; allowed with it: "
                f"strategy in {', '.join(MEAN_RULES)} (got '{axes.aggregation}')"
            )
        if qsfl_quantize and up != "quant":
            return "qsfl.quantize=true quantizes the segments: set uplink='quant' with it"
    return ""


def parameters_problem(aggregation: str, values: dict[str, Any]) -> str:
    """An `aggregation.*` value of another strategy, or out of its range ("" = default)."""
    for key, value in values.items():
        if value == "":
            continue
        takers, low, high, open_bounds, integer = PARAMETERS[key]
        if aggregation not in takers:
            own = [name for name, spec in PARAMETERS.items() if aggregation in spec[0]]
            return (
                f"aggregation.{key}={value!r} is a parameter of {', '.join(takers)}, not of "
                f"strategy '{aggregation}'; its parameters: {', '.join(own) or 'none'}"
            )
        kind = int if integer else (int, float)
        inside = low < value < high if open_bounds else low <= value <= high
        if isinstance(value, bool) or not isinstance(value, kind) or not inside:
            left, right = ("(", ")") if open_bounds else ("[", "]")
            right = ")" if high == math.inf else right
            what = "an integer" if integer else "a number"
            return f"aggregation.{key}={value!r} must be {what} in {left}{low:g}, {high:g}{right}"
    return ""


def parameter_kwargs(values: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of Flower's strategy for the values set ("" left out)."""
    return {key.replace("-", "_"): value for key, value in values.items() if value != ""}
