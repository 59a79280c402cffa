"""Run-config: pyproject defaults, overrides, and validation into frozen pydantic models.

Every check runs before round 1 and fails with a `ConfigError` whose message is one line
naming the key, the value and what is allowed (pydantic's errors, translated by
`_message`). Keys are Flower's flat kebab-case run-config keys; dotted sub-tables (`stc.p-up`)
become nested models (`config.stc.p_up`).
"""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from annotated_types import Ge, Gt, Le, Lt
from flwr.common.config import flatten_dict, get_project_config, unflatten_dict
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from experiment.axes import (
    AGGREGATIONS,
    DOWNLINKS,
    PRESETS,
    SELECTIONS,
    UPLINKS,
    Axes,
    combination_problem,
    parameters_problem,
    preset_problem,
    resolve_axes,
)
from experiment.dataset import HUB_PREFIX
from fedcodec.quant import CODE_BITS, QuantSpec
from netsim.rounds import POLICIES
from protocol import codecs
from protocol.wire import LAYOUTS

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

MODEL_PARAMETERS = {  # tested
    "cnn": 1_663_370,
    "logistic": 7_850,
    "vgg11": 9_750_922,
    "resnet18": 11_173_962,
    "lstm": 866_560,
    "pythia-14m": 14_067_712,
}
# what each model reads and each dataset holds: 28x28 grey images, 32x32 RGB images, text
MODEL_INPUTS = {"cnn": "grey", "logistic": "grey", "vgg11": "rgb", "resnet18": "rgb"}
MODEL_INPUTS |= {"lstm": "text", "pythia-14m": "text"}
DATASET_INPUTS = {"fashion-mnist": "grey", "mnist": "grey", "synthetic": "grey"}
DATASET_INPUTS |= {"cifar10": "rgb", "shakespeare": "text", "shakespeare-roles": "text"}
NATURAL_DATASETS = ("shakespeare-roles",)  # split by their own clients (partitioner "natural")
FLOAT_PRESETS = {"e4m3": (4, 3), "e5m2": (5, 2)}  # exponent and mantissa bits
FAULT_KINDS = ("none", "fail", "hang", "nan", "huge", "garbage", "truncate", "examples")
FAULT_KINDS += ("metrics", "dtype")

Strategy = Literal[(*AGGREGATIONS, *PRESETS)]  # type: ignore[valid-type]
Downlink = Literal[DOWNLINKS]  # type: ignore[valid-type]
Selection = Literal[SELECTIONS]  # type: ignore[valid-type]
Parameter = float | int | str  # "" = Flower's default; checked by experiment.axes
Model = Literal["cnn", "logistic", "vgg11", "resnet18", "lstm", "pythia-14m"]
Channel = Literal["none", "random-walk", "rayleigh", "trace"]
Policy = Literal[POLICIES]  # type: ignore[valid-type]
FaultKind = Literal[FAULT_KINDS]  # type: ignore[valid-type]

Fraction = Annotated[float, Field(gt=0, le=1)]  # (0, 1]
Share = Annotated[float, Field(ge=0, le=1)]  # [0, 1]
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Count = Annotated[int, Field(ge=1)]
CodeBits = Annotated[int, Field(ge=1, le=CODE_BITS - 1)]


class ConfigError(ValueError):
    """A run-config value that is not allowed; the message is meant for the user."""


class _Frozen(BaseModel):
    """Immutable and hashable (a config keys caches), strict types, finite numbers."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class StcConfig(_Frozen):
    """`stc.*`: sparse ternary compression on both links (used when strategy = "stc")."""

    p_up: Fraction
    p_down: Fraction
    accumulate_up: bool
    accumulate_down: bool
    approx: Fraction


class AggregationConfig(_Frozen):
    """`aggregation.*`: parameters of Flower's aggregation strategy ("" = Flower's default)."""

    proximal_mu: Parameter
    server_learning_rate: Parameter
    server_momentum: Parameter
    eta: Parameter
    eta_l: Parameter
    beta_1: Parameter
    beta_2: Parameter
    tau: Parameter
    beta: Parameter
    num_malicious_nodes: Parameter
    num_nodes_to_select: Parameter
    q: Parameter
    client_learning_rate: Parameter

    def values(self) -> dict[str, Parameter]:
        """kebab-case key -> value, as the run-config names them."""
        return {key.replace("_", "-"): value for key, value in self.model_dump().items()}


class WireConfig(_Frozen):
    """`wire.*`: how messages travel (protocol/wire.py)."""

    layout: Literal[LAYOUTS]  # type: ignore[valid-type]


class TopkConfig(_Frozen):
    """`topk.*`: top-k sparsified uplink, float32 values (used when strategy = "topk")."""

    p_up: Fraction
    error_feedback: bool


class QuantConfig(_Frozen):
    """`quant.*`: quantized uplink and optional downlink (used when strategy = "quant")."""

    scheme: Literal["uniform", "fixed", "progressive", "float", "e4m3", "e5m2"]
    bits: Annotated[int, Field(ge=1, le=CODE_BITS)]
    base_bits: CodeBits
    refine_bits: CodeBits
    exponent_bits: CodeBits
    mantissa_bits: Annotated[int, Field(ge=0, le=CODE_BITS - 2)]
    stochastic: bool
    error_feedback: bool
    down_bits: Annotated[int, Field(ge=0, le=CODE_BITS)]
    refine_loss: Share

    @model_validator(mode="after")
    def _widths_fit(self) -> QuantConfig:
        if self.base_bits + self.refine_bits > CODE_BITS:
            raise ValueError(
                f"quant.base-bits={self.base_bits} + quant.refine-bits={self.refine_bits} "
                f"= {self.base_bits + self.refine_bits} bits; allowed: a sum <= {CODE_BITS}"
            )
        if self.scheme == "float" and 1 + self.exponent_bits + self.mantissa_bits > CODE_BITS:
            raise ValueError(
                f"quant.exponent-bits={self.exponent_bits} + quant.mantissa-bits="
                f"{self.mantissa_bits} leave no room for the sign in an {CODE_BITS}-bit code; "
                f"allowed: 1 + exponent + mantissa <= {CODE_BITS}"
            )
        if self.refine_loss > 0 and self.scheme != "progressive":
            raise ValueError(
                f"quant.refine-loss={self.refine_loss} needs quant.scheme='progressive' "
                f"(got '{self.scheme}'); allowed: 0 for other schemes"
            )
        return self

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


class QsflConfig(_Frozen):
    """`qsfl.*`: quality-based selection and one-segment uploads (used when strategy = "qsfl")."""

    beta: Share
    upload_fraction: Fraction
    num_segments: Count
    top_p: Fraction
    relevance: Literal["update", "weights"]
    ensure_coverage: bool
    quantize: bool

    @model_validator(mode="after")
    def _sparse_or_quantized(self) -> QsflConfig:
        if self.quantize and self.top_p < 1:
            raise ValueError(
                f"qsfl.quantize=true with qsfl.top-p={self.top_p}: a segment is either "
                "sparsified or quantized; allowed: qsfl.top-p = 1 with qsfl.quantize = true"
            )
        return self


class FaultConfig(_Frozen):
    """`faults.*`: chosen clients misbehave on purpose (robustness experiments and tests)."""

    kind: FaultKind
    clients: tuple[Annotated[int, Field(ge=0)], ...]  # partition ids
    rounds: tuple[Count, ...]  # empty: every round
    rate: Share
    hang_s: NonNegative
    scale: Positive

    @field_validator("clients", "rounds", mode="before")
    @classmethod
    def _id_list(cls, text: Any, info: Any) -> tuple[int, ...]:
        """A comma-separated list of integers ("" is empty), sorted, without repeats."""
        what, low = {"clients": ("partition ids", 0), "rounds": ("rounds", 1)}[info.field_name]
        key = f"faults.{info.field_name}"
        if not isinstance(text, str):
            raise ValueError(f"{key}={text!r} must be a string (quote it: {key}='...')")
        try:
            values = tuple(sorted({int(part) for part in text.replace(" ", "").split(",") if part}))
        except ValueError:
            values = (low - 1,)
        if any(value < low for value in values):
            raise ValueError(
                f"{key}='{text}' is not a list of {what}; allowed: e.g. '{low}' or '{low},3'"
            )
        return values


class HubConfig(_Frozen):
    """`hub.*`: the columns of a `hub:` dataset: images (or text) and labels (or groups)."""

    image_column: str
    label_column: str
    text_column: str

    @model_validator(mode="after")
    def _images_have_labels(self) -> HubConfig:
        if not self.text_column and not self.label_column:
            raise ValueError(
                "hub.label-column='' names no column; allowed: the column of the labels "
                "(empty only with hub.text-column set: every row in one group)"
            )
        return self


class NetConfig(_Frozen):
    """`net.*`: the simulated network (any strategy); channel "none" is an ideal network."""

    channel: Channel
    policy: Policy
    deadline_s: Positive
    overcommit: Annotated[float, Field(ge=1)]
    step_s: Positive
    min_bps: Positive
    max_bps: Positive
    change_low_bps: float
    change_high_bps: float
    down_factor: Positive
    bandwidth_hz: Positive
    snr_db: float
    distance_min_m: Positive
    distance_max_m: Positive
    path_loss_exponent: NonNegative
    trace_file: str
    seconds_per_sample: NonNegative
    compute_sigma: NonNegative
    rtt_ms: NonNegative

    @model_validator(mode="after")
    def _ranges_and_policy(self) -> NetConfig:
        for low, high in (
            ("min-bps", "max-bps"),
            ("change-low-bps", "change-high-bps"),
            ("distance-min-m", "distance-max-m"),
        ):
            low_value = getattr(self, low.replace("-", "_"))
            high_value = getattr(self, high.replace("-", "_"))
            if low_value > high_value:
                raise ValueError(
                    f"net.{low}={low_value:g} > net.{high}={high_value:g}; "
                    f"allowed: net.{low} <= net.{high}"
                )
        if self.policy != "wait" and not self.simulated:
            channels = ", ".join(get_args(Channel)[1:])
            raise ValueError(
                f"net.policy='{self.policy}' needs a simulated channel, but net.channel='none'; "
                f"set net.channel to one of {channels}"
            )
        return self

    @property
    def simulated(self) -> bool:
        """Whether messages get simulated times."""
        return self.channel != "none"


class ExperimentConfig(_Frozen):
    """The validated run-config of one experiment (keys in kebab-case in pyproject)."""

    strategy: Strategy
    uplink: str  # one of UPLINKS or a registered plugin (protocol/codecs.py)
    codec_modules: str
    downlink: Downlink
    selection: Selection
    aggregation: AggregationConfig
    model: Model
    dataset: str  # a name of DATASET_INPUTS, or hub:<id or folder>
    data_dir: str
    partitioner: Literal["iid", "dirichlet", "classes", "natural"]
    dirichlet_alpha: Positive
    classes_per_client: Count
    balancedness: Fraction
    num_server_rounds: Count
    fraction_train: Fraction
    fraction_evaluate: Share
    local_epochs: Count
    local_steps: Annotated[int, Field(ge=0)]
    batch_size: Count
    lr: Positive
    momentum: Annotated[float, Field(ge=0, lt=1)]
    seed: Annotated[int, Field(ge=0)]
    round_timeout_s: Positive
    outlier_norm_ratio: NonNegative
    device: Literal["auto", "cpu", "cuda"]
    output_dir: str
    run_name: str
    resume: bool
    wire: WireConfig
    stc: StcConfig
    topk: TopkConfig
    quant: QuantConfig
    qsfl: QsflConfig
    net: NetConfig
    faults: FaultConfig
    hub: HubConfig

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        if name not in DATASET_INPUTS and not (
            name.startswith(HUB_PREFIX) and name.removeprefix(HUB_PREFIX)
        ):
            allowed = ", ".join([*DATASET_INPUTS, f"{HUB_PREFIX}<id or folder>"])
            raise ValueError(f"dataset='{name}' is not known; allowed: {allowed}")
        return name

    @field_validator("outlier_norm_ratio")
    @classmethod
    def _off_or_at_least_the_median(cls, ratio: float) -> float:
        if 0 < ratio < 1:  # below 1 the round's median update would be an outlier itself
            raise ValueError(
                f"outlier-norm-ratio={ratio:g} would reject the median update; allowed: 0 "
                "(off) or a number >= 1"
            )
        return ratio

    @model_validator(mode="after")
    def _settings_fit_together(self) -> ExperimentConfig:
        problem = _model_and_data_problem(self) or _combination_problem(self)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def axes(self) -> Axes:
        """Aggregation, uplink, downlink and selection (a preset expanded)."""
        return resolve_axes(
            self.strategy,
            self.uplink,
            self.downlink,
            self.selection,
            self.quant.down_bits,
            self.qsfl.quantize,
        )

    def to_flat(self) -> dict[str, Any]:
        """The config as Flower's flat kebab-case run-config (dotted sub-tables)."""
        table = self.model_dump()
        for key in ("clients", "rounds"):  # as the run-config writes them: "0,3"
            table["faults"][key] = ",".join(map(str, table["faults"][key]))
        return flatten_dict(_renamed(table, "_", "-"))


def _model_and_data_problem(config: ExperimentConfig) -> str:
    """A model goes with the data it reads (text split IID), a language model with text."""
    inputs = MODEL_INPUTS[config.model]
    if DATASET_INPUTS.get(config.dataset, inputs) != inputs:  # a hub: dataset: checked loaded
        wanted = [name for name, held in DATASET_INPUTS.items() if held == inputs]
        return (
            f"model='{config.model}' does not fit dataset='{config.dataset}'; allowed with "
            f"this model: dataset in {', '.join(wanted)}"
        )
    grouped = config.dataset.startswith(HUB_PREFIX) and bool(config.hub.text_column)
    natural = config.dataset in NATURAL_DATASETS or grouped
    text_splits = ("iid", "natural") if grouped else ("natural",) if natural else ("iid",)
    if inputs == "text" and config.partitioner not in text_splits:
        return (
            f"partitioner='{config.partitioner}' does not split dataset='{config.dataset}'; "
            f"allowed with it: {', '.join(text_splits)}"
        )
    if config.partitioner == "natural" and not natural:
        return (
            f"partitioner='natural' needs a dataset of natural clients; allowed: dataset in "
            f"{', '.join(NATURAL_DATASETS)}, or a hub: dataset with hub.text-column set"
        )
    if config.model == "pythia-14m" and importlib.util.find_spec("transformers") is None:
        return (
            f"model='{config.model}' needs transformers, which is not installed; run "
            "`make pythia` or `pip install -e '.[pythia]'`"
        )
    if config.data_dir and not Path(config.data_dir).is_dir():
        return (
            f"data-dir='{config.data_dir}' is not a folder; give the folder "
            'that holds the dataset\'s files, or "" for the default'
        )
    return ""


def _combination_problem(config: ExperimentConfig) -> str:
    """Settings of two sub-tables that do not go together."""
    axes = config.axes
    problem = (
        _uplink_problem(config)
        or preset_problem(config.strategy, config.uplink, config.downlink, config.selection)
        or combination_problem(axes, config.quant.down_bits, config.qsfl.quantize)
        or parameters_problem(axes.aggregation, config.aggregation.values())
    )
    if problem:
        return problem
    if config.resume and not config.run_name:
        return "resume=true needs the run-name of the run to resume; allowed: run-name='<name>'"
    parameters = MODEL_PARAMETERS[config.model]
    if config.qsfl.num_segments > parameters:
        return (
            f"qsfl.num-segments={config.qsfl.num_segments} is more than the {parameters:,} "
            f"parameters of model '{config.model}'; allowed: 1..{parameters}"
        )
    if config.net.policy == "partial" and (
        (axes.uplink, axes.selection) != ("quant", "uniform")
        or config.quant.scheme != "progressive"
    ):
        return (
            f"net.policy='partial' needs uplink='quant' (or strategy='quant') with "
            f"quant.scheme='progressive' (got strategy='{config.strategy}', uplink="
            f"'{axes.uplink}', quant.scheme='{config.quant.scheme}'); allowed otherwise: wait, "
            "drop, overcommit"
        )
    return ""


def _uplink_problem(config: ExperimentConfig) -> str:
    """An uplink that is neither built in nor a registered plugin (after `codec-modules`)."""
    try:
        codecs.load(config.codec_modules)
    except ImportError as error:
        return f"codec-modules='{config.codec_modules}' cannot be imported: {error}"
    allowed = (*UPLINKS, *codecs.names())
    if config.uplink not in allowed:
        return (
            f"uplink='{config.uplink}' is not known; allowed: {', '.join(allowed)} (or a codec "
            "registered by a module of codec-modules)"
        )
    return ""


def _renamed(table: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """`table` with `old` replaced by `new` in every key, sub-tables included."""
    return {
        key.replace(old, new): _renamed(value, old, new) if isinstance(value, dict) else value
        for key, value in table.items()
    }


def pyproject_defaults(path: Path = PYPROJECT) -> dict[str, Any]:
    """`[tool.flwr.app.config]` of pyproject.toml as a flat dict (dotted sub-tables)."""
    return flatten_dict(get_project_config(path.parent)["tool"]["flwr"]["app"]["config"])


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
    try:
        config = ExperimentConfig.model_validate(_renamed(unflatten_dict(flat), "-", "_"))
    except ValidationError as error:
        raise ConfigError(_message(error.errors()[0], flat)) from None
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


def _message(error: dict[str, Any], flat: dict[str, Any]) -> str:
    """One line for a pydantic error: the key, the value and what is allowed."""
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])
    key = ".".join(str(part).replace("_", "-") for part in error["loc"])
    if error["type"] == "missing":
        return f"run-config key '{key}' is missing"
    if error["type"] == "extra_forbidden":
        return f"unknown run-config key '{key}'"
    value, field = flat.get(key, error["input"]), _field(error["loc"])
    if error["type"] == "literal_error" and isinstance(value, str):
        return f"{key}='{value}' is not known; allowed: {', '.join(get_args(field.annotation))}"
    if error["type"] in ("literal_error", "string_type"):
        return f"{key}={value!r} must be a string (quote it: {key}='...')"
    if error["type"] == "bool_type":
        return f"{key}={value!r} must be true or false"
    allowed = _allowed(field)
    if error["type"].endswith("_type") or error["type"].endswith("_parsing"):
        kind = "an" if field.annotation is int else "a number in"
        return f"{key}={value!r} must be {kind} {allowed}"
    return f"{key}={value} is out of range; allowed: {allowed}"


def _field(loc: tuple) -> Any:
    """The pydantic FieldInfo at `loc` (a path of field names)."""
    model: Any = ExperimentConfig
    for part in loc[:-1]:
        model = model.model_fields[part].annotation
    return model.model_fields[loc[-1]]


def _allowed(field: Any) -> str:
    """A field's range: `integer >= 1`, `integer in 1..8`, `(0, 1]` or `[0, inf)`."""
    low = next((item for item in field.metadata if isinstance(item, Gt | Ge)), None)
    high = next((item for item in field.metadata if isinstance(item, Lt | Le)), None)
    low_value = getattr(low, "gt", getattr(low, "ge", None))
    high_value = getattr(high, "lt", getattr(high, "le", None))
    if field.annotation is int:
        return f"integer in {low_value}..{high_value}" if high else f"integer >= {low_value}"
    left = "[" if isinstance(low, Ge) else "("
    right = "]" if isinstance(high, Le) else ")"
    low_text = "-inf" if low is None else f"{low_value:g}"
    high_text = "inf" if high is None else f"{high_value:g}"
    return f"{left}{low_text}, {high_text}{right}"


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
