"""Record and metric keys shared by the client app, the mods and the strategies."""

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"

SERVER_ROUND = "server-round"
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"

# Codec instructions in the train ConfigRecord, and the compressed records (see mods/stc_mod.py)
CODEC = "codec"
STC_P_UP = "stc.p-up"
STC_APPROX = "stc.approx"
STC_ACCUMULATE_UP = "stc.accumulate-up"
SEED = "seed"
DOWN_ROUNDS = "down.rounds"  # rounds whose compressed deltas the "down" record carries, in order
DOWN = "down"  # ArrayRecord of catch-up deltas: "<round>.bits", "<round>.counts", "<round>.means"

# What a client keeps in context.state between rounds
STATE_GLOBAL = "stc.global"  # its copy of the global model
STATE_RESIDUAL = "stc.residual"  # its uplink error-feedback residual
