"""Client state off the heap: versions by round, committed only by a reply without error."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict

from fedcodec.quant import QuantSpec
from mods.qsfl_mod import qsfl_mod, upload_segment
from mods.quant_mod import quant_mod
from mods.state_mod import PartitionStates, make_state_mod, state_link
from mods.stc_mod import stc_mod
from mods.topk_mod import topk_mod
from mods.wire_mod import wire_mod
from protocol import keys, wire
from protocol.qsfl import CODEC as QSFL
from protocol.quant import spec_config
from protocol.stc import codec_entries
from tests.support import context, random_model, record, train_message, trainer


def note_round(msg: Message, ctx: Context) -> Message:
    """A call_next that appends the message's round to a state entry, and replies."""
    seen = ctx.state.config_records.get("seen", ConfigRecord({"rounds": []}))
    server_round = int(msg.content[keys.CONFIG][keys.SERVER_ROUND])
    ctx.state["seen"] = ConfigRecord({"rounds": [*seen["rounds"], server_round]})
    return Message(RecordDict(), reply_to=msg)


def round_message(server_round: int, entries: dict | None = None) -> Message:
    config = ConfigRecord({keys.SERVER_ROUND: server_round} | (entries or {}))
    return train_message(RecordDict({keys.CONFIG: config}))


@pytest.fixture
def linked(tmp_path):
    """A run whose clients keep their state in files: the link the ServerApp makes."""
    link = state_link(str(tmp_path / "outputs"), run_id=1)  # support.context() is run 1
    (tmp_path / "run" / "client-state").mkdir(parents=True)
    link.parent.mkdir(parents=True)
    link.symlink_to(tmp_path / "run" / "client-state")
    return make_state_mod({"output-dir": str(tmp_path / "outputs")}), tmp_path / "run"


def test_versions_by_round_keep_the_newest_and_the_one_before(tmp_path):
    store = PartitionStates(tmp_path, 3)
    for server_round in (1, 2, 4):
        store.save(server_round, RecordDict({"c": ConfigRecord({"round": server_round})}))
    # Assert: round 1's version is gone; a round reads the newest version up to itself
    assert store.rounds() == [2, 4]
    assert store.load(3)["c"]["round"] == 2
    assert store.load(4)["c"]["round"] == 4
    assert len(store.load(1)) == 0
    store.drop_after(2)  # a run resumed after round 2 redoes round 4
    assert store.rounds() == [2]


def test_state_is_read_before_and_written_after_a_good_reply_only(linked):
    state_mod, run_dir = linked
    ctx = context()

    def fail_after(msg, c):
        note_round(msg, c)
        raise RuntimeError("injected: the ClientApp crashed after changing its state")

    def error_after(msg, c):
        note_round(msg, c)
        return Message(Error(code=0, reason="injected"), reply_to=msg)

    # Execute: round 1 replies; round 2 raises; round 3 replies with an error; round 4 replies
    state_mod(round_message(1), ctx, note_round)
    assert len(ctx.state) == 0  # nothing stays in Flower's context
    with pytest.raises(RuntimeError):
        state_mod(round_message(2), ctx, fail_after)
    ctx.state = RecordDict()  # Flower discards the context of a ClientApp that raised
    state_mod(round_message(3), ctx, error_after)
    state_mod(round_message(4), ctx, note_round)
    # Assert: only rounds 1 and 4 were kept; the files are versions 1 and 4
    stored = PartitionStates(run_dir / "client-state", 0)
    assert stored.load(4)["seen"]["rounds"] == [1, 4]
    assert stored.rounds() == [1, 4]


def test_a_packed_message_finds_its_state_before_the_wire_mod_opens_it(linked):
    # Prepare: rounds 1 and 2 in the compact layout (protocol/wire.py), through the wire mod
    state_mod, run_dir = linked
    ctx = context()

    def chain(msg, c):
        return wire_mod(msg, c, note_round)

    # Execute
    for server_round in (1, 2):
        message = round_message(server_round)
        message.content = wire.pack(message.content)
        state_mod(message, ctx, chain)
    # Assert: round 2 read round 1's state and saved both rounds
    assert PartitionStates(run_dir / "client-state", 0).load(2)["seen"]["rounds"] == [1, 2]


def test_a_client_without_state_writes_no_file(linked):
    state_mod, run_dir = linked
    state_mod(round_message(1), context(), lambda msg, c: Message(RecordDict(), reply_to=msg))
    assert PartitionStates(run_dir / "client-state", 0).rounds() == []


def test_without_the_link_the_state_stays_in_the_context(tmp_path):
    state_mod = make_state_mod({"output-dir": str(tmp_path)})
    ctx = context()
    state_mod(round_message(1), ctx, note_round)
    assert ctx.state["seen"]["rounds"] == [1]
    assert not (tmp_path / ".client-state").exists()


STEP = random_model(7)
START = random_model(0)
CODEC_MODS = {
    "stc": (stc_mod, codec_entries(0.1, 1.0, True, seed=5)),
    "topk": (topk_mod, {keys.CODEC: "topk", keys.TOPK_P_UP: 0.1, keys.TOPK_ERROR_FEEDBACK: True}),
    "quant": (quant_mod, spec_config(QuantSpec("uniform", bits=2), True) | {keys.SEED: 5}),
}


def coded_round(state_mod, ctx, server_round: int, preset: str, crash: bool = False):
    """One dense train message through the state mod and a codec mod; the reply's arrays."""
    codec_mod, entries = CODEC_MODS[preset]
    config = ConfigRecord({keys.SERVER_ROUND: server_round} | entries)
    msg = train_message(RecordDict({keys.ARRAYS: record(START), keys.CONFIG: config}))

    def client(m, c):
        reply = codec_mod(m, c, trainer(STEP, []))
        if crash:
            raise RuntimeError("injected: crashed after encoding")
        return reply

    reply = state_mod(msg, ctx, client)
    return {name: array.numpy() for name, array in reply.content[keys.ARRAYS].items()}


@pytest.mark.parametrize("preset", sorted(CODEC_MODS))
def test_a_client_that_crashed_goes_on_from_its_last_good_state(linked, tmp_path, preset):
    # Prepare: client 0 answers rounds 1 and 3 and crashes in round 2 after encoding (its
    # residual had moved); a second run's client 0 answers rounds 1 and 3 only
    state_mod, _ = linked
    crashed = context()
    coded_round(state_mod, crashed, 1, preset)
    with pytest.raises(RuntimeError):
        coded_round(state_mod, crashed, 2, preset, crash=True)
    other = tmp_path / "other"
    (other / "run").mkdir(parents=True)
    other_mod = make_state_mod({"output-dir": str(other / "outputs")})
    state_link(str(other / "outputs"), 1).parent.mkdir(parents=True)
    state_link(str(other / "outputs"), 1).symlink_to(other / "run")
    clean = context()
    coded_round(other_mod, clean, 1, preset)
    # Execute
    after_crash = coded_round(state_mod, context(), 3, preset)
    never_crashed = coded_round(other_mod, context(), 3, preset)
    # Assert: the same round-3 reply, bit for bit: the crash left no trace in the state
    assert after_crash.keys() == never_crashed.keys()
    for name, value in after_crash.items():
        np.testing.assert_array_equal(value, never_crashed[name])


def test_a_qsfl_client_that_crashed_in_phase_one_has_nothing_to_upload(linked):
    state_mod, _ = linked
    config = {keys.CODEC: QSFL, keys.QSFL_RELEVANCE: "update"}
    msg = train_message(
        RecordDict(
            {keys.ARRAYS: record(START), keys.CONFIG: ConfigRecord({keys.SERVER_ROUND: 2} | config)}
        )
    )

    def crash_after(m, c):
        qsfl_mod(m, c, trainer(STEP, []))
        raise RuntimeError("injected: crashed after keeping its update")

    with pytest.raises(RuntimeError):
        state_mod(msg, context(), crash_after)
    upload = Message(
        RecordDict(
            {
                keys.CONFIG: ConfigRecord(
                    {
                        keys.SERVER_ROUND: 2,
                        keys.SEED: 5,
                        keys.QSFL_SEGMENT: 0,
                        keys.QSFL_NUM_SEGMENTS: 2,
                        keys.QSFL_TOP_P: 1.0,
                        keys.QSFL_QUANTIZE: False,
                    }
                )
            }
        ),
        message_type=keys.UPLOAD,
        dst_node_id=1,
    )
    with pytest.raises(RuntimeError, match="no update of round 2 to upload"):
        state_mod(upload, context(), upload_segment)
