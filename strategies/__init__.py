"""Flower strategies that measure every message and the presets built on them."""

from strategies.bandwidth_fedavg import BandwidthFedAvg
from strategies.qsfl import QsflFedAvg
from strategies.quant import QuantFedAvg
from strategies.stc import StcFedAvg
from strategies.topk import TopkFedAvg

PRESETS = {
    "fedavg": BandwidthFedAvg,
    "stc": StcFedAvg,
    "quant": QuantFedAvg,
    "qsfl": QsflFedAvg,
    "topk": TopkFedAvg,
}

__all__ = ["PRESETS", "BandwidthFedAvg", "QsflFedAvg", "QuantFedAvg", "StcFedAvg", "TopkFedAvg"]
