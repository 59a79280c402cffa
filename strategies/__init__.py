"""Flower strategies that measure every message and the presets built on them."""

from strategies.bandwidth_fedavg import BandwidthFedAvg

__all__ = ["BandwidthFedAvg"]
