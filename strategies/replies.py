"""What makes a reply usable: checks of its records and metrics, and the outlier rule.

Pure functions of a reply's content and what the server knows (the global model, the size of
the sender's partition): each returns "" for a usable reply or one line saying what is wrong,
which the strategy logs beside the `rejected` row.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import MetricRecord, RecordDict

from protocol import keys

ACCEPTED = ("delivered", "partial")  # statuses whose update is aggregated
TRAIN_METRICS = (keys.TRAIN_LOSS, keys.NUM_EXAMPLES)  # what an update's MetricRecord holds
EVALUATE_METRICS = (keys.EVAL_LOSS, keys.EVAL_ACCURACY, keys.NUM_EXAMPLES)
UPDATE_RECORDS = "expected one ArrayRecord 'arrays' and one MetricRecord 'metrics'"


def metrics_problem(metrics: MetricRecord, expected: tuple[str, ...], max_examples: int) -> str:
    """What is wrong with a reply's metrics ("" when Flower's averaging may take them).

    Exactly the `expected` keys, so that a foreign key never reaches Flower's metric
    aggregation (which raises on replies whose keys differ), all finite numbers, and an
    example count in 1 .. `max_examples` (the samples of the client's partition).
    """
    if set(metrics) != set(expected):
        return f"metric keys {sorted(metrics)} are not {sorted(expected)}"
    for key in expected:
        value = metrics[key]
        if not isinstance(value, int | float) or not math.isfinite(value):
            return f"{key}={value!r} is not a finite number"
    return examples_problem(metrics[keys.NUM_EXAMPLES], max_examples)


def examples_problem(examples: object, max_examples: int) -> str:
    """What is wrong with a reply's example count ("" when it is in 1 .. `max_examples`)."""
    if not isinstance(examples, int | float) or not 0 < examples <= max_examples:
        return (
            f"{keys.NUM_EXAMPLES}={examples!r} is not a count in 1..{max_examples} "
            "(the samples of its partition)"
        )
    return ""


def has_update_records(content: RecordDict) -> bool:
    """Exactly one ArrayRecord `arrays` and one MetricRecord `metrics`."""
    return (
        keys.ARRAYS in content.array_records
        and keys.METRICS in content.metric_records
        and len(content) == 2
    )


def dense_model_problem(content: RecordDict, model_dtypes: dict[str, np.dtype], shapes) -> str:
    """What is wrong with a dense model's arrays ("" when they can replace the global model).

    `model_dtypes`: the dtypes clients train in (the initial model's; Flower's FedOpt family
    turns the global model into float64, clients still reply in float32); `shapes`: the
    global model's, name -> shape.
    """
    arrays = content[keys.ARRAYS]
    if {name: tuple(array.shape) for name, array in arrays.items()} != shapes:
        return "array names or shapes differ from the global model"
    dtypes = {name: np.dtype(array.dtype) for name, array in arrays.items()}
    if dtypes != model_dtypes:
        return f"array dtypes {sorted(set(map(str, dtypes.values())))} differ from the model's"
    if not all(np.isfinite(array.numpy()).all() for array in arrays.values()):
        return "NaN or inf in the update"
    return ""


def outliers(norms: dict[int, float], ratio: float) -> dict[int, float]:
    """The updates whose norm exceeds `ratio` x the median of `norms`: index -> that multiple.

    The rule applies when `ratio` > 0 and there are at least 3 norms; a median of 0 (nobody
    moved) leaves it out.
    """
    if not ratio or len(norms) < 3:
        return {}
    median = float(np.median(list(norms.values())))
    if median <= 0:
        return {}
    return {index: norm / median for index, norm in norms.items() if norm > ratio * median}
