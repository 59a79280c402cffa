"""Flower strategies that measure every message and the presets built on them."""

from strategies.bandwidth_fedavg import BandwidthFedAvg
from strategies.qsfl import QsflFedAvg
from strategies.quant import QuantFedAvg
from strategies.stc import StcFedAvg

PRESETS = {
    "fedavg": BandwidthFedAvg,
    "stc": StcFedAvg,
    "quant": QuantFedAvg,
    "qsfl": QsflFedAvg,
}

__all__ = ["PRESETS", "BandwidthFedAvg", "QsflFedAvg", "QuantFedAvg", "StcFedAvg"]
