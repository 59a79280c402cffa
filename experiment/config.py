"""Run-config: pyproject defaults, overrides, and validation into a frozen dataclass.

Every check runs before round 1 and fails with a `ConfigError` whose message is one
line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import importlib.util
import math
import tomllib
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedcodec.quant import CODE_BITS, QuantSpec
from netsim.rounds import POLICIES

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

STRATEGIES = ("fedavg", "stc", "topk", "quant", "qsfl")
MODEL_PARAMETERS = {"cnn": 1_663_370, "logistic": 7_850, "pythia-14m": 14_067_712}  # tested
MODELS = tuple(MODEL_PARAMETERS)
IMAGE_DATASETS, TEXT_DATASETS = ("fashion-mnist", "mnist", "synthetic"), ("shakespeare",)
DATASETS = IMAGE_DATASETS + TEXT_DATASETS
TEXT_MODELS = ("pythia-14m",)
PARTITIONERS = ("iid", "dirichlet", "classes")
QUANT_SCHEMES = ("uniform", "fixed", "progressive", "float", "e4m3", "e5m2")
FLOAT_PRESETS = {"e4m3": (4, 3), "e5m2": (5, 2)}  # exponent and mantissa bits
CHANNELS = ("none", "random-walk", "rayleigh", "trace")
DEVICES = ("auto", "cpu", "cuda")
RELEVANCE = ("update", "weights")


class ConfigError(ValueError):
    """A run-config value that is not allowed; the message is meant for the user."""


@dataclass(frozen=True)
class StcConfig:
    """`stc.*`: sparse ternary compression on both links (used when strategy = "stc")."""

    p_up: float
    p_down: float
    accumulate_up: bool
    accumulate_down: bool
    approx: float


@dataclass(frozen=True)
class TopkConfig:
    """`topk.*`: top-k sparsified uplink, float32 values (used when strategy = "topk")."""

    p_up: float
    error_feedback: bool


@dataclass(frozen=True)
class QuantConfig:
    """`quant.*`: quantized uplink and optional downlink (used when strategy = "quant")."""

    scheme: str
    bits: int
    base_bits: int
    refine_bits: int
    exponent_bits: int
    mantissa_bits: int
    stochastic: bool
    error_feedback: bool
    down_bits: int
    refine_loss: float

    @property
    def spec(self) -> QuantSpec:
        """The uplink quantizer (`e4m3` / `e5m2` are the float scheme with fixed widths)."""
        exponent, mantissa = FLOAT_PRESETS.get(
            self.scheme, (self.exponent_bits, self.mantissa_bits)
        )
        return QuantSpec(
            scheme="float" if self.scheme in FLOAT_PRESETS else self.scheme,
            bits=self.bits,
            base_bits=self.base_bits,
            refine_bits=self.refine_bits,
            exponent_bits=exponent,
            mantissa_bits=mantissa,
            stochastic=self.stochastic,
        )


@dataclass(frozen=True)
class QsflConfig:
    """`qsfl.*`: quality-based selection and one-segment uploads (used when strategy = "qsfl")."""

    beta: float
    upload_fraction: float
    num_segments: int
    top_p: float
    relevance: str
    ensure_coverage: bool
    quantize: bool


FAULT_KINDS = (
    "none",
    "fail",
    "hang",
    "nan",
    "huge",
    "garbage",
    "truncate",
    "examples",
    "metrics",
    "dtype",
)


@dataclass(frozen=True)
class FaultConfig:
    """`faults.*`: chosen clients misbehave on purpose (robustness experiments and tests)."""

    kind: str
    clients: tuple[int, ...]
    rounds: tuple[int, ...]  # empty: every round
    rate: float
    hang_s: float
    scale: float


@dataclass(frozen=True)
class NetConfig:
    """`net.*`: the simulated network (any strategy); channel "none" is an ideal network."""

    channel: str
    policy: str
    deadline_s: float
    overcommit: float
    step_s: float
    min_bps: float
    max_bps: float
    change_low_bps: float
    change_high_bps: float
    down_factor: float
    bandwidth_hz: float
    snr_db: float
    distance_min_m: float
    distance_max_m: float
    path_loss_exponent: float
    trace_file: str
    seconds_per_sample: float
    compute_sigma: float
    rtt_ms: float

    @property
    def simulated(self) -> bool:
        """Whether messages get simulated times."""
        return self.channel != "none"


@dataclass(frozen=True)
class ExperimentConfig:
    """The validated run-config of one experiment (keys in kebab-case in pyproject)."""

    strategy: str
    model: str
    dataset: str
    data_dir: str
    partitioner: str
    dirichlet_alpha: float
    classes_per_client: int
    balancedness: float
    num_server_rounds: int
    fraction_train: float
    fraction_evaluate: float
    local_epochs: int
    local_steps: int
    batch_size: int
    lr: float
    momentum: float
    seed: int
    round_timeout_s: float
    outlier_norm_ratio: float
    device: str
    output_dir: str
    run_name: str
    stc: StcConfig
    topk: TopkConfig
    quant: QuantConfig
    qsfl: QsflConfig
    net: NetConfig
    faults: FaultConfig

    def to_flat(self) -> dict[str, Any]:
        """Return the config as Flower's flat kebab-case run-config (dotted sub-tables)."""
        return flatten(_kebab(asdict(self)))


def _kebab(table: dict[str, Any]) -> dict[str, Any]:
    return {
        key.replace("_", "-"): _kebab(value) if isinstance(value, dict) else value
        for key, value in table.items()
    }


def pyproject_defaults(path: Path = PYPROJECT) -> dict[str, Any]:
    """Read `[tool.flwr.app.config]` from pyproject.toml as a flat dict (dotted sub-tables)."""
    with path.open("rb") as file:
        table = tomllib.load(file)["tool"]["flwr"]["app"]["config"]
    return flatten(table)


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested TOML tables as flat dotted keys: {"stc": {"p-up": 0.1}} -> {"stc.p-up": 0.1}."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def resolve(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge overrides into the pyproject defaults; an unknown key is a `ConfigError`."""
    merged = pyproject_defaults()
    for key, value in (overrides or {}).items():
        if key not in merged:
            allowed = ", ".join(sorted(merged))
            raise ConfigError(f"unknown run-config key '{key}'; known keys: {allowed}")
        merged[key] = value
    return merged


def parse(flat: dict[str, Any], *, server: bool = True) -> ExperimentConfig:
    """Validate a flat run-config (as Flower hands it to the apps) into `ExperimentConfig`.

    With `server=False` (a ClientApp) the server's own settings, the trace file and the
    output folder, are neither checked nor touched: a SuperNode need not hold them.
    """
    get = _Getter(flat)
    config = ExperimentConfig(
        strategy=get.choice("strategy", STRATEGIES),
        model=get.choice("model", MODELS),
        dataset=get.choice("dataset", DATASETS),
        data_dir=get.string("data-dir"),
        partitioner=get.choice("partitioner", PARTITIONERS),
        dirichlet_alpha=get.number("dirichlet-alpha", low=0.0, low_open=True),
        classes_per_client=get.integer("classes-per-client", low=1),
        balancedness=get.number("balancedness", low=0.0, high=1.0, low_open=True),
        num_server_rounds=get.integer("num-server-rounds", low=1),
        fraction_train=get.number("fraction-train", low=0.0, high=1.0, low_open=True),
        fraction_evaluate=get.number("fraction-evaluate", low=0.0, high=1.0),
        local_epochs=get.integer("local-epochs", low=1),
        local_steps=get.integer("local-steps", low=0),
        batch_size=get.integer("batch-size", low=1),
        lr=get.number("lr", low=0.0, low_open=True),
        momentum=get.number("momentum", low=0.0, high=1.0, high_open=True),
        seed=get.integer("seed", low=0),
        round_timeout_s=get.number("round-timeout-s", low=0.0, low_open=True),
        outlier_norm_ratio=get.number("outlier-norm-ratio", low=0.0),
        device=get.choice("device", DEVICES),
        output_dir=get.string("output-dir"),
        run_name=get.string("run-name"),
        stc=StcConfig(
            p_up=get.number("stc.p-up", low=0.0, high=1.0, low_open=True),
            p_down=get.number("stc.p-down", low=0.0, high=1.0, low_open=True),
            accumulate_up=get.boolean("stc.accumulate-up"),
            accumulate_down=get.boolean("stc.accumulate-down"),
            approx=get.number("stc.approx", low=0.0, high=1.0, low_open=True),
        ),
        topk=TopkConfig(
            p_up=get.number("topk.p-up", low=0.0, high=1.0, low_open=True),
            error_feedback=get.boolean("topk.error-feedback"),
        ),
        quant=_quant_config(get),
        qsfl=QsflConfig(
            beta=get.number("qsfl.beta", low=0.0, high=1.0),
            upload_fraction=get.number("qsfl.upload-fraction", low=0.0, high=1.0, low_open=True),
            num_segments=get.integer("qsfl.num-segments", low=1),
            top_p=get.number("qsfl.top-p", low=0.0, high=1.0, low_open=True),
            relevance=get.choice("qsfl.relevance", RELEVANCE),
            ensure_coverage=get.boolean("qsfl.ensure-coverage"),
            quantize=get.boolean("qsfl.quantize"),
        ),
        net=_net_config(get),
        faults=fault_config(get),
    )
    _check_model_and_data(config)
    parameters = MODEL_PARAMETERS[config.model]
    if config.qsfl.num_segments > parameters:
        raise ConfigError(
            f"qsfl.num-segments={config.qsfl.num_segments} is more than the {parameters:,} "
            f"parameters of model '{config.model}'; allowed: 1..{parameters}"
        )
    if config.qsfl.quantize and config.qsfl.top_p < 1:
        raise ConfigError(
            f"qsfl.quantize=true with qsfl.top-p={config.qsfl.top_p}: a segment is either "
            "sparsified or quantized; allowed: qsfl.top-p = 1 with qsfl.quantize = true"
        )
    if config.net.policy == "partial" and (
        config.strategy != "quant" or config.quant.scheme != "progressive"
    ):
        raise ConfigError(
            f"net.policy='partial' needs strategy='quant' with quant.scheme='progressive' "
            f"(got strategy='{config.strategy}', quant.scheme='{config.quant.scheme}'); "
            "allowed otherwise: wait, drop, overcommit"
        )
    if config.data_dir and not Path(config.data_dir).is_dir():
        raise ConfigError(
            f"data-dir='{config.data_dir}' is not a folder; give the folder "
            'that holds the IDX files, or "" for the default'
        )
    if server:
        _check_server_settings(config)
    return config


def _check_server_settings(config: ExperimentConfig) -> None:
    """What only the ServerApp uses: the output folder and the channel trace."""
    if not config.output_dir:
        raise ConfigError("output-dir='' is empty; give a folder for the run logs")
    if config.net.channel == "trace" and not Path(config.net.trace_file).is_file():
        raise ConfigError(
            f"net.trace-file='{config.net.trace_file}' is not a file; net.channel='trace' needs "
            "a CSV with the columns client,time_s,up_bps,down_bps"
        )


def _check_model_and_data(config: ExperimentConfig) -> None:
    """A language model goes with text (split IID), an image model with images."""
    if (config.model in TEXT_MODELS) != (config.dataset in TEXT_DATASETS):
        wanted = TEXT_DATASETS if config.model in TEXT_MODELS else IMAGE_DATASETS
        raise ConfigError(
            f"model='{config.model}' does not fit dataset='{config.dataset}'; allowed with "
            f"this model: dataset in {', '.join(wanted)}"
        )
    if config.dataset in TEXT_DATASETS and config.partitioner != "iid":
        raise ConfigError(
            f"partitioner='{config.partitioner}' needs class labels, which text has not; "
            f"allowed with dataset='{config.dataset}': iid"
        )
    if config.model in TEXT_MODELS and importlib.util.find_spec("transformers") is None:
        raise ConfigError(
            f"model='{config.model}' needs transformers, which is not installed; run "
            "`make pythia` or `pip install -e '.[pythia]'`"
        )


def _quant_config(get: _Getter) -> QuantConfig:
    quant = QuantConfig(
        scheme=get.choice("quant.scheme", QUANT_SCHEMES),
        bits=get.integer("quant.bits", low=1, high=CODE_BITS),
        base_bits=get.integer("quant.base-bits", low=1, high=CODE_BITS - 1),
        refine_bits=get.integer("quant.refine-bits", low=1, high=CODE_BITS - 1),
        exponent_bits=get.integer("quant.exponent-bits", low=1, high=CODE_BITS - 1),
        mantissa_bits=get.integer("quant.mantissa-bits", low=0, high=CODE_BITS - 2),
        stochastic=get.boolean("quant.stochastic"),
        error_feedback=get.boolean("quant.error-feedback"),
        down_bits=get.integer("quant.down-bits", low=0, high=CODE_BITS),
        refine_loss=get.number("quant.refine-loss", low=0.0, high=1.0),
    )
    if quant.base_bits + quant.refine_bits > CODE_BITS:
        raise ConfigError(
            f"quant.base-bits={quant.base_bits} + quant.refine-bits={quant.refine_bits} "
            f"= {quant.base_bits + quant.refine_bits} bits; allowed: a sum <= {CODE_BITS}"
        )
    if quant.scheme == "float" and 1 + quant.exponent_bits + quant.mantissa_bits > CODE_BITS:
        raise ConfigError(
            f"quant.exponent-bits={quant.exponent_bits} + quant.mantissa-bits="
            f"{quant.mantissa_bits} leave no room for the sign in an {CODE_BITS}-bit code; "
            f"allowed: 1 + exponent + mantissa <= {CODE_BITS}"
        )
    if quant.refine_loss > 0 and quant.scheme != "progressive":
        raise ConfigError(
            f"quant.refine-loss={quant.refine_loss} needs quant.scheme='progressive' "
            f"(got '{quant.scheme}'); allowed: 0 for other schemes"
        )
    return quant


def fault_config(get: _Getter) -> FaultConfig:
    """The `faults.*` keys (a client reads them alone, per message)."""
    return FaultConfig(
        kind=get.choice("faults.kind", FAULT_KINDS),
        clients=_id_list(get, "faults.clients", "partition ids", low=0),
        rounds=_id_list(get, "faults.rounds", "rounds", low=1),
        rate=get.number("faults.rate", low=0.0, high=1.0),
        hang_s=get.number("faults.hang-s", low=0.0),
        scale=get.number("faults.scale", low=0.0, low_open=True),
    )


def _net_config(get: _Getter) -> NetConfig:
    positive = {"low": 0.0, "low_open": True}
    net = NetConfig(
        channel=get.choice("net.channel", CHANNELS),
        policy=get.choice("net.policy", POLICIES),
        deadline_s=get.number("net.deadline-s", **positive),
        overcommit=get.number("net.overcommit", low=1.0),
        step_s=get.number("net.step-s", **positive),
        min_bps=get.number("net.min-bps", **positive),
        max_bps=get.number("net.max-bps", **positive),
        change_low_bps=get.number("net.change-low-bps", low=-math.inf),
        change_high_bps=get.number("net.change-high-bps", low=-math.inf),
        down_factor=get.number("net.down-factor", **positive),
        bandwidth_hz=get.number("net.bandwidth-hz", **positive),
        snr_db=get.number("net.snr-db", low=-math.inf),
        distance_min_m=get.number("net.distance-min-m", **positive),
        distance_max_m=get.number("net.distance-max-m", **positive),
        path_loss_exponent=get.number("net.path-loss-exponent", low=0.0),
        trace_file=get.string("net.trace-file"),
        seconds_per_sample=get.number("net.seconds-per-sample", low=0.0),
        compute_sigma=get.number("net.compute-sigma", low=0.0),
        rtt_ms=get.number("net.rtt-ms", low=0.0),
    )
    for low, high in (
        ("min-bps", "max-bps"),
        ("change-low-bps", "change-high-bps"),
        ("distance-min-m", "distance-max-m"),
    ):
        low_value = getattr(net, low.replace("-", "_"))
        high_value = getattr(net, high.replace("-", "_"))
        if low_value > high_value:
            raise ConfigError(
                f"net.{low}={low_value:g} > net.{high}={high_value:g}; "
                f"allowed: net.{low} <= net.{high}"
            )
    if net.policy != "wait" and not net.simulated:
        raise ConfigError(
            f"net.policy='{net.policy}' needs a simulated channel, but net.channel='none'; "
            f"set net.channel to one of {', '.join(CHANNELS[1:])}"
        )
    return net


def _id_list(get: _Getter, key: str, what: str, low: int) -> tuple[int, ...]:
    """A comma-separated list of integers >= `low` ("" is empty), sorted, without repeats."""
    text = get.string(key).replace(" ", "")
    try:
        values = tuple(sorted({int(part) for part in text.split(",") if part}))
    except ValueError:
        values = (low - 1,)
    if any(value < low for value in values):
        allowed = f"e.g. '{low}' or '{low},3'"
        raise ConfigError(f"{key}='{text}' is not a list of {what}; allowed: {allowed}")
    return values


def default_run_name(config: ExperimentConfig) -> str:
    """`<strategy>-<model>-<dataset>-<UTC time>` when `run-name` is empty."""
    if config.run_name:
        return config.run_name
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{config.strategy}-{config.model}-{config.dataset}-{stamp}"


def selected_count(num_clients: int, fraction: float) -> int:
    """Clients per round for a fraction of `num_clients` (Flower's rule: int(n * f))."""
    return int(num_clients * fraction)


def check_selection(config: ExperimentConfig, clients: int) -> None:
    """Each round must select at least one client for training (and evaluation, if on)."""
    for key, fraction in (
        ("fraction-train", config.fraction_train),
        ("fraction-evaluate", config.fraction_evaluate),
    ):
        if fraction > 0 and selected_count(clients, fraction) < 1:
            raise ConfigError(
                f"{key}={fraction} selects no client out of {clients}; "
                f"allowed: {key} >= 1/{clients}"
            )


class _Getter:
    """Typed, range-checked reads from a flat config with user-facing errors."""

    def __init__(self, flat: dict[str, Any]) -> None:
        self.flat = flat

    def _raw(self, key: str) -> Any:
        if key not in self.flat:
            raise ConfigError(f"run-config key '{key}' is missing")
        return self.flat[key]

    def string(self, key: str) -> str:
        value = self._raw(key)
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} must be a string (quote it: {key}='...')")
        return value

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        value = self.string(key)
        if value not in allowed:
            raise ConfigError(f"{key}='{value}' is not known; allowed: {', '.join(allowed)}")
        return value

    def boolean(self, key: str) -> bool:
        value = self._raw(key)
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false")
        return value

    def integer(self, key: str, low: int, high: int | None = None) -> int:
        value = self._raw(key)
        allowed = f"integer >= {low}" if high is None else f"integer in {low}..{high}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} must be an {allowed}")
        if value < low or (high is not None and value > high):
            raise ConfigError(f"{key}={value} is out of range; allowed: {allowed}")
        return value

    def number(
        self,
        key: str,
        low: float,
        high: float | None = None,
        low_open: bool = False,
        high_open: bool = False,
    ) -> float:
        value = self._raw(key)
        allowed = _interval(low, high, low_open, high_open)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}={value!r} must be a number in {allowed}")
        too_low = value <= low if low_open else value < low
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high or not math.isfinite(value):
            raise ConfigError(f"{key}={value} is out of range; allowed: {allowed}")
        return float(value)


def _interval(low: float, high: float | None, low_open: bool, high_open: bool) -> str:
    left = "(" if low_open else "["
    if high is None:
        return f"{left}{low:g}, inf)"
    right = ")" if high_open else "]"
    return f"{left}{low:g}, {high:g}{right}"
