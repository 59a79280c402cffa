"""The ClientApp: report the partition id, train locally, evaluate locally."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from experiment.config import ExperimentConfig, parse
from experiment.models import build_model
from experiment.task import Samples, client_data, compute_device, evaluate, local_train
from mods.codec_mod import codec_mod
from mods.fault_mod import make_fault_mod
from mods.qsfl_mod import qsfl_mod, upload_segment
from mods.quant_mod import quant_mod
from mods.state_mod import make_state_mod
from mods.stc_mod import stc_mod
from mods.topk_mod import topk_mod
from mods.wire_mod import wire_mod
from protocol import keys


class RebuiltClientApp(ClientApp):
    """A ClientApp that pickles as the call that builds it.

    Flower's simulation sends the ClientApp to a Ray actor with every message; pickled by
    value, its closures (handlers, mods) cost cloudpickle a walk over their globals each time.
    As `make_client_app(run_config, user_mods)` it is a reference, a small dict and the user's
    mods (module-level functions pickle by reference).
    """

    def __init__(
        self, run_config: dict[str, Any] | None, user_mods: tuple[Mod, ...], **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._run_config = run_config
        self._user_mods = user_mods

    def __reduce__(self) -> tuple:
        return make_client_app, (self._run_config, self._user_mods)


def make_client_app(
    run_config: dict[str, Any] | None = None, mods: Sequence[Mod] = ()
) -> ClientApp:
    """Build a ClientApp; `run_config` replaces Flower's (empty under `run_simulation`).

    `mods`: the user's own client mods (or Flower's, such as `fixedclipping_mod`), innermost,
    in order: they see what the train handler sees (the dense model the codec mod rebuilt)
    and its reply before the codec mod encodes it. Give them as module-level functions: the
    app travels to simulated clients by reference.
    """
    # the state mod outermost: it commits the state only when the reply left without error;
    # then the wire mod: it unpacks and measures the message before decoding and the reply after
    # encoding (and after an injected fault, if any: faults.*)
    app_mods = [
        make_state_mod(run_config),
        wire_mod,
        make_fault_mod(run_config),
        stc_mod,
        topk_mod,
        codec_mod,
        quant_mod,
        qsfl_mod,
        *mods,
    ]
    app = RebuiltClientApp(run_config, tuple(mods), mods=app_mods)
    app.train("upload")(upload_segment)  # QSFL's phase 2: message type "train.upload"

    given = parse(run_config, server=False) if run_config else None  # once, not per message

    def setup(context: Context) -> tuple[ExperimentConfig, int, int]:
        torch.set_num_threads(1)  # one CPU per simulated client; several run side by side
        config = given or parse(dict(context.run_config), server=False)
        partition_id = int(context.node_config[keys.PARTITION_ID])
        num_partitions = int(context.node_config[keys.NUM_PARTITIONS])
        return config, partition_id, num_partitions

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        """The node's partition ids; none when its node config lacks them (the server says so)."""
        ids = {
            key: int(context.node_config[key])
            for key in (keys.PARTITION_ID, keys.NUM_PARTITIONS)
            if key in context.node_config
        }
        return Message(RecordDict({keys.METRICS: MetricRecord(ids)}), reply_to=msg)

    @app.train()
    def train_handler(msg: Message, context: Context) -> Message:
        config, partition_id, num_partitions = setup(context)
        server_round = int(msg.content[keys.CONFIG][keys.SERVER_ROUND])
        model, data = received_model_and_data(msg, config, partition_id, num_partitions)
        if len(data) == 0:  # the server logs this reason beside the `failed` row
            raise ValueError(f"partition {partition_id} holds no sample: nothing to train")
        mu = float(msg.content[keys.CONFIG].get(keys.PROXIMAL_MU, 0.0))  # FedProx's
        loss = local_train(model, data, config, server_round, partition_id, mu)
        metrics = MetricRecord({keys.TRAIN_LOSS: loss, keys.NUM_EXAMPLES: len(data)})
        content = RecordDict({keys.ARRAYS: ArrayRecord(model.state_dict()), keys.METRICS: metrics})
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate_handler(msg: Message, context: Context) -> Message:
        config, partition_id, num_partitions = setup(context)
        model, data = received_model_and_data(msg, config, partition_id, num_partitions)
        loss, accuracy = evaluate(model, data)
        metrics = MetricRecord(
            {keys.EVAL_LOSS: loss, keys.EVAL_ACCURACY: accuracy, keys.NUM_EXAMPLES: len(data)}
        )
        return Message(RecordDict({keys.METRICS: metrics}), reply_to=msg)

    return app


def received_model_and_data(
    msg: Message, config: ExperimentConfig, partition_id: int, num_partitions: int
) -> tuple[torch.nn.Module, Samples]:
    """The model the server sent and this client's data, both on the configured device."""
    device = compute_device(config.device)
    model = process_model(config.model, config.seed, device)
    model.load_state_dict(msg.content[keys.ARRAYS].to_torch_state_dict())
    return model, client_data(config, partition_id, num_partitions).to(device)


@functools.lru_cache(maxsize=2)
def process_model(name: str, seed: int, device: torch.device) -> torch.nn.Module:
    """The model this process trains its clients' messages on, built once: every message
    loads the server's weights into all of its parameters and buffers (a strict
    `load_state_dict`), and one process runs one ClientApp at a time."""
    return build_model(name, seed).to(device)


app = make_client_app()
