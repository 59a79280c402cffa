"""The wrapper around Flower's strategies: bytes measured, codecs on each link, selection."""

from experiment.config import ExperimentConfig
from experiment.recorder import Recorder
from strategies.bandwidth_fedavg import BandwidthFedAvg
from strategies.plugin import PluginCodec
from strategies.qsfl import QsflFedAvg
from strategies.quant import QuantFedAvg
from strategies.stc import StcFedAvg
from strategies.topk import TopkFedAvg

UPLINK_CODECS = {
    "none": BandwidthFedAvg,
    "stc": StcFedAvg,
    "topk": TopkFedAvg,
    "quant": QuantFedAvg,
}


def build_strategy(config: ExperimentConfig, recorder: Recorder) -> BandwidthFedAvg:
    """The wrapper the config's axes ask for, around the Flower strategy it names."""
    axes = config.axes
    if axes.selection == "qsfl":
        return QsflFedAvg(config, recorder)
    return UPLINK_CODECS.get(axes.uplink, PluginCodec)(config, recorder)


__all__ = [
    "BandwidthFedAvg",
    "PluginCodec",
    "QsflFedAvg",
    "QuantFedAvg",
    "StcFedAvg",
    "TopkFedAvg",
    "build_strategy",
]
