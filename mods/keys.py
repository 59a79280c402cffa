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
