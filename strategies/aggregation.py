"""Flower's own aggregation strategies, built from the run-config, as the wrapper uses them.

The wrapper (strategies.bandwidth) selects clients, encodes what it sends, measures and decodes
what comes back; the Flower strategy it wraps does what it does for any Flower app: it adds
its entries to the train config (FedProx's `proximal-mu`), notes the round's global model
(FedAdam, FedAvgM, QFedAvg) and combines the decoded models of the accepted replies, as
Flower's DP wrappers hand their inner strategy clipped models.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import strategy as flower

from experiment.axes import parameter_kwargs
from experiment.config import ExperimentConfig
from protocol import keys

STRATEGIES: dict[str, type[flower.FedAvg]] = {
    "fedavg": flower.FedAvg,
    "fedavgm": flower.FedAvgM,
    "fedprox": flower.FedProx,
    "fedadam": flower.FedAdam,
    "fedyogi": flower.FedYogi,
    "fedadagrad": flower.FedAdagrad,
    "fedmedian": flower.FedMedian,
    "fedtrimmedavg": flower.FedTrimmedAvg,
    "krum": flower.Krum,
    "multikrum": flower.MultiKrum,
    "bulyan": flower.Bulyan,
    "qfedavg": flower.QFedAvg,
}
# whose aggregation starts with FedAvg's weighted mean of the replies (then maybe a server
# step): handing them that mean as one reply gives what they give for every reply
MEAN_RULES = (flower.FedAvg, flower.FedAvgM, flower.FedProx, flower.FedAdam, flower.FedYogi)
MEAN_RULES += (flower.FedAdagrad,)
ANY_NODE = 1  # the node id of the one-node grid a strategy configures its round on


def build_aggregation(config: ExperimentConfig) -> flower.FedAvg:
    """The Flower strategy `config` names, with its `aggregation.*` parameters.

    It sees every node the wrapper hands it (selection is the wrapper's), reads the example
    count and loss under this app's keys; QFedAvg's client learning rate defaults to `lr`.
    """
    name = config.axes.aggregation
    kwargs = parameter_kwargs(config.aggregation.values())
    if name == "qfedavg":
        kwargs = {"client_learning_rate": config.lr, "train_loss_key": keys.TRAIN_LOSS} | kwargs
    return STRATEGIES[name](
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=1,
        weighted_by_key=keys.NUM_EXAMPLES,
        arrayrecord_key=keys.ARRAYS,
        configrecord_key=keys.CONFIG,
        **kwargs,
    )


def streams_mean(strategy: flower.Strategy) -> bool:
    """Whether the weighted mean of the replies, as one reply, is all `strategy` needs."""
    return type(strategy) in MEAN_RULES


class _OneNode:
    """The grid a wrapped strategy configures its round on: one node, nothing sent."""

    @staticmethod
    def get_node_ids() -> list[int]:
        return [ANY_NODE]


def train_entries(
    strategy: flower.Strategy, server_round: int, arrays: ArrayRecord, config: ConfigRecord
) -> dict:
    """The entries `strategy` puts in a train message's config (its own, e.g. `proximal-mu`,
    and the round's); it notes the round's global model as it would before a real round."""
    with _quiet():  # its "sampled 1 node" is not this round's selection
        config = ConfigRecord(dict(config))  # a strategy may write into it
        messages = list(strategy.configure_train(server_round, arrays, config, _OneNode()))
    return dict(messages[0].content[keys.CONFIG]) if messages else dict(config)


def model_reply(model: dict[str, np.ndarray], metrics: MetricRecord) -> Message:
    """A decoded update as the wrapped strategy reads a client's reply: model and metrics."""
    arrays = ArrayRecord({name: Array(np.asarray(value)) for name, value in model.items()})
    content = RecordDict({keys.ARRAYS: arrays, keys.METRICS: metrics})
    return Message(content, dst_node_id=ANY_NODE, message_type=MessageType.TRAIN)


@contextmanager
def _quiet() -> Iterator[None]:
    """Flower's INFO and WARNING lines off for a moment."""
    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
