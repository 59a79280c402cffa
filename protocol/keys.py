"""Record, config and metric keys shared by the client app, the mods and the strategies."""

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"

SERVER_ROUND = "server-round"
CODEC_MODULES = "codec-modules"  # run-config: modules that register uplink plugins
PROXIMAL_MU = "proximal-mu"  # FedProx's entry in the train config (Flower's key)
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"

# Codec instructions in the train ConfigRecord, and the compressed records (see protocol/stc.py)
CODEC = "codec"
STC_P_UP = "stc.p-up"
STC_APPROX = "stc.approx"
STC_ACCUMULATE_UP = "stc.accumulate-up"
SEED = "seed"
DOWN_ROUNDS = "down.rounds"  # rounds whose compressed deltas the "down" record carries, in order
DOWN = "down"  # ArrayRecord of catch-up deltas: "<round>.bits", "<round>.header"
MODEL = "model"  # metric of an STC reply: the model it trained from (protocol/stc.py)

# Quantized transmission (see protocol/quant.py): the uplink spec, and a quantized downlink
QUANT_SCHEME = "quant.scheme"  # uniform | fixed | progressive | float
QUANT_BITS = "quant.bits"
QUANT_BASE_BITS = "quant.base-bits"
QUANT_REFINE_BITS = "quant.refine-bits"
QUANT_EXPONENT_BITS = "quant.exponent-bits"
QUANT_MANTISSA_BITS = "quant.mantissa-bits"
QUANT_STOCHASTIC = "quant.stochastic"
QUANT_ERROR_FEEDBACK = "quant.error-feedback"
QUANT_DOWN_BITS = "quant.down-bits"
DOWN_QUANT = "down.quant"  # ArrayRecord of the uniformly quantized global model
DOWN_NAMES = "down.names"  # its tensor names, in order
DOWN_SHAPES = "down.shapes"  # per tensor: its rank, then its dimensions

# Top-k uplink (see protocol/topk.py)
TOPK_P_UP = "topk.p-up"
TOPK_ERROR_FEEDBACK = "topk.error-feedback"

# QSFL (see protocol/qsfl.py): phase 1 trains and reports scalars, phase 2 uploads a segment
UPLOAD = "train.upload"  # message type of the phase-2 request
QSFL_RELEVANCE = "qsfl.relevance"  # "update" or "weights": what the update's signs are compared to
QSFL_SIGNS = "qsfl.signs"  # ArrayRecord "signs": packed bits, 1 where the last global update > 0
QSFL_SEGMENT = "qsfl.segment"  # the segment to upload
QSFL_NUM_SEGMENTS = "qsfl.num-segments"
QSFL_TOP_P = "qsfl.top-p"
QSFL_QUANTIZE = "qsfl.quantize"  # the segment goes through the quant.* entries of the request
RELEVANCE = "relevance"  # metric: fraction of entries whose signs agree

# Measured by the wire mod (mods/wire_mod.py) into the reply's metrics, at the message
# level; read and removed by the strategies before the metrics are checked or averaged
CLIENT_DOWN_BYTES = "client-down-message-bytes"  # the message the client received
CLIENT_UP_BYTES = "client-up-message-bytes"  # the reply as it left (these entries included)

# What a client keeps in context.state between rounds
STATE_GLOBAL = "stc.global"  # its copy of the global model
STATE_GLOBAL_ROUND = "stc.global-round"  # ConfigRecord {"round": r}: that copy is round r's
STATE_RESIDUAL = "stc.residual"  # its uplink error-feedback residual
STATE_QUANT_RESIDUAL = "quant.residual"  # its quantized-uplink error-feedback residual
STATE_TOPK_RESIDUAL = "topk.residual"  # its top-k uplink error-feedback residual
STATE_QSFL_UPDATE = "qsfl.update"  # its last flat update, kept for a possible upload
STATE_QSFL_REPORT = "qsfl.report"  # the round, loss and examples of that update
