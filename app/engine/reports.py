"""Every job report's shape, typed: one model per technique, the pipeline report, and the
union of them all discriminated by ``technique``, under ONE ``SCHEMA_VERSION``.

Techniques build their report as JSON-ready data and pass it through ``checked`` at the end of
``run()``: what a job stores is exactly what it stored before, now known to match its model.
The API imports this module for its OpenAPI schema and the HTML page parses stored reports
into these models, so it imports pydantic and the standard library only.

Fields a report written by an older engine lacks are optional (``None``); a field the engine
sometimes leaves out is optional too. Models refuse unknown fields, so a technique that starts
writing a new field must describe it here (the engine tests validate every technique's real
output). Bump ``SCHEMA_VERSION`` only for a change a reader of stored reports must know about.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

SCHEMA_VERSION = 1

Device = Literal["cpu", "gpu"]
Dim = Union[int, str, None]


class Part(BaseModel):
    """Base of every report model: unknown fields refused (the schema says all there is)."""

    model_config = ConfigDict(extra="forbid")


# --- shared pieces --------------------------------------------------------------------------

class Environment(Part):
    """Where a measurement ran (``app.engine.runtime.environment.describe_environment``)."""

    cpu_model: str | None = None
    cpu_features: list[str] = []
    logical_cores: int | None = None
    usable_cores: int | None = None
    cgroup_cpu_limit: float | None = None
    total_memory_bytes: int | None = None
    os: str | None = None
    python: str | None = None
    onnxruntime: str | None = None
    onnx: str | None = None
    numpy: str | None = None
    available_providers: list[str] = []
    torch: str | None = Field(default=None, description="torch techniques only.")


class ValueSpec(Part):
    """A model input or output: ``shape`` holds ints, symbolic names, or null (unknown)."""

    name: str
    shape: list[Dim] | None = None
    dtype: str


class Inputs(Part):
    """Where the measured inputs came from and how symbolic dimensions resolved."""

    source: Literal["dataset", "generated"]
    specs: list[ValueSpec] = []
    dataset_samples: int | None = None
    dims: dict[str, int] | None = None


class Skipped(Part):
    batch_size: int
    reason: str


class HostLoad(Part):
    """CPU load on the host while a comparison was timed (``measure.speedup.HostLoadProbe``):
    the whole machine's busy time minus this process's is other processes' load."""

    cores: int | None = None
    wall_s: float | None = None
    own_cpu_s: float | None = None
    own_cpu_share: float | None = Field(default=None, description=(
        "CPU time this process got / the wall time its threads could have used (1 = never waited)."))
    others_cpu_percent: float | None = Field(default=None, description=(
        "Share of the machine's CPU capacity used by other processes during the measurement."))
    others_cores: float | None = None
    steal_percent: float | None = None
    loadavg_1m: list[float | None] = Field(default=[], description="1-minute load average at start and end.")
    busy: bool | None = None
    busy_points: int | None = None
    points: int | None = None
    summary: str | None = None


class SpeedupEstimate(Part):
    """A speedup measured in interleaved rounds (``measure.speedup.time_paired``): the median
    of per-round ratios (reference time / this model's time) with its interval and verdict."""

    reference: str | None = None
    basis: Literal["wall", "cpu"] | None = Field(default=None, description=(
        "What speedup and its interval are in: wall time, or process CPU time on a busy host."))
    speedup: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float | None = None
    rounds: int | None = None
    wall_speedup: float | None = Field(default=None, description="The median per-round ratio in wall time.")
    cpu_speedup: float | None = Field(default=None, description="The same ratio in process CPU time.")
    verdict: Literal["faster", "slower", "inconclusive"]
    reason: str | None = None
    round_speedups: list[float] | None = Field(default=None, description="Each round's wall-time ratio, in round order.")


class Latency(Part):
    """One model timed at one point (``app.engine.measure.latency``)."""

    batch_size: int | None = None
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float | None = None
    std_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    runs: int | None = None
    ci_rel_half_width: float | None = Field(
        default=None, description="Relative half-width of the 95% interval of p50.")
    throughput_items_per_s: float | None = Field(default=None, description=(
        "batch size / p50 (reports of older engines: batch size x runs / total timed time)."))
    tail_outlier: bool | None = Field(default=None, description="p99 above 5x the p50.")
    cpu_p50_ms: float | None = Field(default=None, description="Median process CPU time of one run.")
    vs_reference: SpeedupEstimate | None = Field(default=None, description=(
        "In a comparison, every model but the reference: its interleaved speedup over it."))
    warmup_runs: int | None = None
    budget_exhausted: bool | None = None
    noisy: bool | None = None
    session_create_ms: float | None = None


class ComparePoint(Part):
    """Parent vs result timed back to back at one point (``quantize.report.compare_point``)."""

    batch_size: int
    threads: int
    parent_p50_ms: float
    result_p50_ms: float
    speedup: float = Field(description="Median of per-round parent/result time ratios, timed "
                           "interleaved, in speedup_ci.basis time (older reports: parent p50 / "
                           "result p50); above 1 is faster.")
    speedup_ci: SpeedupEstimate | None = None
    parent_p90_ms: float | None = None
    result_p90_ms: float | None = None
    parent_p99_ms: float | None = None
    result_p99_ms: float | None = None
    parent_cpu_p50_ms: float | None = None
    result_cpu_p50_ms: float | None = None
    parent_runs: int | None = None
    result_runs: int | None = None
    tail_outliers: list[str] = Field(default=[], description="p99s above 5x their p50, explained.")
    host_load: HostLoad | None = None
    input_shapes: dict[str, list[int]] = {}


class OutputFidelity(Part):
    """One output of the result against the same output of the reference."""

    samples: int
    error: str | None = None
    exact_match: float | None = None
    cosine_mean: float | None = None
    cosine_min: float | None = None
    max_abs_error: float | None = None
    mean_abs_error: float | None = None
    top1_agreement: float | None = None
    nearest_neighbour_agreement: float | None = None
    nearest_neighbour_samples: int | None = None
    non_finite_samples: int | None = None


class Fidelity(Part):
    source: Literal["dataset", "generated"] | None = None
    samples: int | None = Field(default=None, description="Samples actually compared.")
    samples_requested: int | None = None
    samples_note: str | None = Field(default=None, description="Why fewer were compared than requested.")
    outputs: dict[str, OutputFidelity] = {}


class Scores(Part):
    samples: int
    top1: float | None = None
    top5: float | None = None
    mse: float | None = None
    mae: float | None = None


class Accuracy(Part):
    """Scores against the dataset's labels; ``error`` alone when labels could not be used."""

    error: str | None = None
    task: str | None = None
    output: str | None = None
    model: Scores | None = None
    reference: Scores | None = None
    drop: float | None = Field(default=None, description=(
        "classification: top-1 points lost; regression: MSE increase in percent."))


class SizeCount(Part):
    size_bytes: int | None = None
    parameter_count: int | None = None


class Verdict(Part):
    """Only what was measured: ``faster`` needs every point faster."""

    faster: bool | None = Field(default=None, description="null: the measurement could not tell (see speed).")
    speed: Literal["faster", "slower", "mixed", "inconclusive"] | None = None
    smaller: bool | None = None
    within_tolerance: bool | None = None
    smaller_compressed: bool | None = None
    min_speedup: float | None = None
    max_speedup: float | None = None
    reasons: list[str] = []
    summary: str | None = None


class VersionChange(Part):
    """A version as the file came (``original``) and as used."""

    original: int
    used: int


class Normalization(Part):
    """How the job's model was normalised before the technique read it
    (``app.engine.runtime.normalize``); absent when nothing needed changing."""

    changes: list[str] = []
    ir_version: VersionChange | None = None
    initializer_inputs_removed: int | None = None
    folded: list[str] = Field(default=[], description="Constant subgraph outputs folded into "
                              "initializers of the same name.")
    constants_to_initializers: int | None = None
    error: str | None = Field(default=None, description="Why the model could not be normalised "
                              "(the technique read it as uploaded).")


class Report(Part):
    """Fields every report has."""

    schema_version: int = SCHEMA_VERSION
    technique: str
    normalization: Normalization | None = Field(
        default=None, description="Set on the first step when the job's model was normalised "
        "(old ONNX: initializer inputs, constant weight subgraphs, IR < 4).")


# --- measure --------------------------------------------------------------------------------

class ModelStats(Part):
    size_bytes: int | None = None
    parameter_count: int | None = None
    opset: int | None = None


class BenchmarkPoint(Latency):
    threads: int
    provider: str | None = None
    input_shapes: dict[str, list[int]] = {}


class Memory(Part):
    rss_before_session_bytes: int | None = None
    rss_after_runs_bytes: int | None = None
    process_peak_rss_bytes: int | None = None
    peak_scope: Literal["job", "process_lifetime"] | None = None


class Sla(Part):
    max_latency_ms: float | None = None
    min_throughput: float | None = None
    latency_stat: str = "p99"


class BestPoint(Part):
    batch_size: int
    threads: int
    provider: str | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    throughput_items_per_s: float | None = None


class Recommendation(Part):
    sla: Sla
    best: BestPoint | None = None
    reason: str | None = None
    flags: list[str] = Field(default=[], description="Why the recommendation's p99 may not be the model's own.")


class BenchmarkReport(Report):
    technique: Literal["benchmark"]
    model: ModelStats | None = None
    device: Device | None = None
    provider: str | None = None
    results: list[BenchmarkPoint]
    skipped: list[Skipped] = []
    noisy_points: int | None = None
    host_load: HostLoad | None = None
    recommendation: Recommendation | None = None
    session_create_ms: float | None = None
    memory: Memory | None = None
    inputs: Inputs | None = None
    environment: Environment | None = None
    notes: list[str] = []


class ComparedModel(Part):
    id: str
    label: str | None = None
    size_bytes: int | None = None


class ComparedPoint(Part):
    batch_size: int
    threads: int
    provider: str | None = None
    results: dict[str, Latency] = Field(description="Timings by model id.")
    ratios: dict[str, float] = Field(default={}, description="p50 / the job model's p50, by model id.")
    host_load: HostLoad | None = None


class Evaluation(Part):
    """One model's accuracy (and fidelity to the job's model), as ``compare_models`` returns."""

    source: Literal["dataset", "generated"] | None = None
    samples: int | None = None
    fidelity: Fidelity | None = None
    accuracy: Accuracy | None = None
    top1: float | None = Field(default=None, description="Reports of older engines: top-1 alone.")


class CompareReport(Report):
    technique: Literal["compare"]
    models: list[ComparedModel]
    points: list[ComparedPoint]
    skipped: list[Skipped] = []
    accuracy: dict[str, Evaluation] | None = Field(default=None, description="By model id, with a dataset.")
    host_load: HostLoad | None = None
    inputs: Inputs | None = None
    environment: Environment | None = None
    notes: list[str] = []
    summary: str | None = None


class Reference(Part):
    source: Literal["reference_model_id", "parent"]
    model_id: str | None = None


class EvaluateReport(Report):
    technique: Literal["evaluate"]
    samples: int
    accuracy: Accuracy | None = None
    reference: Reference | None = None
    fidelity: Fidelity | None = None
    device: Device | None = None
    environment: Environment | None = None


# --- quantize -------------------------------------------------------------------------------

class Opset(VersionChange):
    """The opset the quantizer ran at (converted up from ``original`` when it needed that)."""


class Quantization(Part):
    """What the quantizer was asked to do; which fields appear depends on the technique."""

    mode: str | None = None
    format: str | None = None
    calibration: str | None = None
    calibration_samples: int | None = None
    weight_type: str | None = None
    activation_type: str | None = None
    per_channel: bool | None = None
    reduce_range: bool | None = None
    op_types: list[str] | None = None
    keep_io_types: bool | None = None
    block_size: int | None = None
    symmetric: bool | None = None
    accuracy_level: int | None = None
    gather_quantized: bool | None = None
    float_layers: list[str] | None = None
    preprocess: str | None = None
    opset: Opset | None = None
    excluded_nodes: list[str] = []
    excluded_op_types: list[str] | None = None
    # Nodes left float because calibration saw attention-mask values (-inf / finfo.min) there.
    mask_nodes: list[str] | None = None
    # quantize.static's transformer recipe (smooth_alpha / mask_padding): SmoothQuant's alpha,
    # how many activations it smoothed, and the attention-mask input whose padding was skipped.
    smooth_alpha: float | None = None
    mask_padding: bool | None = None
    smoothed_tensors: int | None = None
    mask_input: str | None = None


class Nodes(Part):
    """Node counts: what could be quantized, what was, what stayed float."""

    parent_total: int
    result_total: int
    candidates_in_parent: dict[str, int] = {}
    quantized_ops: dict[str, int] = {}
    float_compute_left: dict[str, int] = {}
    qdq_compute: int = 0
    quantized_nodes_added: int | None = None
    compute_quantized: int | None = None
    compute_total: int | None = None


class Tolerance(Part):
    min_cosine: float | None = None
    min_cosine_per_sample: float | None = None
    max_accuracy_drop_pt: float | None = Field(default=None, description="Percentage points.")
    max_accuracy_drop: float | None = Field(default=None, description=(
        "Reports written before max_accuracy_drop_pt: the same figure (percentage points)."))
    mean_cosine: float | None = None
    worst_cosine: float | None = Field(default=None, description="Lowest per-sample cosine.")
    accuracy_drop: float | None = None
    within: bool | None = None


class QuantizeReport(Report):
    """quantize.dynamic / static / fp16 / int4: parent vs result measured in the same run."""

    technique: Literal["quantize.dynamic", "quantize.static", "quantize.fp16", "quantize.int4"]
    parent: SizeCount
    result: SizeCount
    size_ratio: float
    quantization: Quantization
    nodes: Nodes | None = None
    runtime_ops: dict[str, int] | None = Field(default=None, description=(
        "Op types of the graph onnxruntime runs after its fusions; null if it could not be saved."))
    device: Device | None = None
    provider: str | None = None
    comparison: list[ComparePoint]
    host_load: HostLoad | None = None
    skipped: list[Skipped] = []
    fidelity: Fidelity | None = None
    accuracy: Accuracy | None = None
    tolerance: Tolerance | None = None
    verdict: Verdict
    inputs: Inputs | None = None
    environment: Environment | None = None
    notes: list[str] = []


class LayerSensitivity(Part):
    layer: str
    group: int | None = Field(default=None, description="Scored with its group (see group_size).")
    op_type: str | None = None
    error: float | None = None
    mean_cosine: float | None = None
    accuracy_drop: float | None = None


class Sensitivity(Part):
    mode: str | None = None
    per_channel: bool | None = None
    samples: int | None = None
    metric: str | None = None
    group_size: int | None = Field(default=None, description=(
        "Layers scored together, consecutive in graph order (1: each layer alone)."))
    layers: list[LayerSensitivity] = []
    other_modes: dict[str, list[LayerSensitivity]] = {}


class Candidate(Part):
    """One quantize.auto variant at one number of float layers."""

    name: str
    mode: str | None = None
    per_channel: bool | None = None
    float_layers: int | None = None
    phase: str | None = Field(default=None, description="whole_model or bisection.")
    skipped: str | None = Field(default=None, description="Why it was not tried.")
    failed: str | None = Field(default=None, description="Why the quantizer could not build it "
                               "(the search went on to the next candidate).")
    samples: int | None = None
    mean_cosine: float | None = None
    cosine_min: float | None = Field(default=None, description="Lowest per-sample cosine.")
    accuracy_drop: float | None = None
    error: float | None = None
    meets_tolerance: bool | None = None
    timed: bool | None = None
    chosen: bool | None = None
    size_bytes: int | None = None
    geomean_speedup: float | None = None
    p50_ms: dict[str, float] = Field(default={}, description="p50 by batch size (JSON keys are strings).")


class AttentionFusion(Part):
    """Attention blocks rewritten as onnxruntime's com.microsoft.MultiHeadAttention before
    quantizing, checked against the parent on sample inputs."""

    fused: int = Field(description="Attention blocks rewritten; 0: none (see reason).")
    max_abs_diff: float | None = Field(
        default=None, description="Largest |fused - parent| over every output on the check's "
        "samples, relative to max(1, max |parent|).")
    reason: str | None = Field(default=None, description="Why nothing was fused.")


class AutoSearch(Part):
    """How quantize.auto searched: wall time per phase, whether sensitivity ran, the timing."""

    phases: dict[str, float] = Field(default={}, description="Wall seconds of each phase run.")
    sensitivity_ran: bool | None = None
    order: list[str] = []
    finalists: list[str] = []
    timing: dict[str, Any] | None = None
    attention_fusion: AttentionFusion | None = Field(
        default=None, description="Lathe's attention fusion of the staged parent (fuse_attention).")


class AutoPruning(Part):
    """quantize.auto's pruning candidates (prune_ratios): what each gave, which was kept."""

    chosen_ratio: float | None = Field(description="null: none kept, plain quantization.")
    train_samples: int = Field(description="The dataset's first samples, used for recovery training.")
    holdout_samples: int = Field(description="The rest: every tolerance check of a pruned candidate.")
    tried: list[dict[str, Any]] = Field(default=[], description="Per ratio: the pruned model "
                                        "alone against the tolerance, the outcome, seconds.")
    reason: str | None = None


class QuantizeAutoReport(QuantizeReport):
    technique: Literal["quantize.auto"]  # type: ignore[assignment]
    sensitivity: Sensitivity | None = None
    candidates: list[Candidate] = []
    search: AutoSearch | None = None
    pruning: AutoPruning | None = None


class GraphFusion(Part):
    """What optimize.graph asked onnxruntime's transformer optimizer for, and what it fused."""

    model_type: str = Field(description="The fusion set used; generic: no transformer fusions.")
    model_type_requested: str
    num_heads: int = Field(description="0: left to the optimizer's own detection.")
    hidden_size: int = Field(description="0: left to the optimizer's own detection.")
    attention_shape: str | None = Field(
        default=None, description="Where num_heads/hidden_size came from: given, detected from the graph, or left to the optimizer.")
    opt_level: int | None = None
    float16: bool
    use_gpu: bool
    fused_operators: dict[str, int] = Field(
        default={}, description="Fused operator counts (get_fused_operator_statistics), nonzero only.")
    transformer_fusions: Literal["applied", "not_applicable"]


class OptimizeGraphReport(QuantizeReport):
    technique: Literal["optimize.graph"]  # type: ignore[assignment]
    graph: GraphFusion


# --- torch techniques -----------------------------------------------------------------------

class TorchStats(Part):
    parameter_count: int | None = None
    macs: int | None = None
    size_bytes: int | None = None
    nonzero_parameters: int | None = None
    zip_size_bytes: int | None = None


class CheckedBatch(Part):
    batch_size: int
    output_shapes: list[list[int]]


class Verification(Part):
    """The result loaded and ran in onnxruntime with the parent's output names and shapes."""

    onnxruntime_loaded: bool
    output_shapes_match_parent: bool | None = None
    checked: list[CheckedBatch] = []


class Epoch(Part):
    epoch: int
    lr: float
    train_loss: float
    train_accuracy: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None


class LrPoint(Part):
    lr: float
    loss: float


class RecipeTrial(Part):
    """One short training run from the same weights, scored on held-out data."""

    optimizer: str
    lr: float
    batch_size: int
    why: str
    steps: int | None = Field(default=None, description="Training steps of this trial.")
    val_loss: float | None = None
    val_accuracy: float | None = None


class LrRangeTest(Part):
    """How the learning rate (and, when "auto", the optimizer and batch size) was chosen."""

    chosen_lr: float
    rule: str
    curve: list[LrPoint] = Field(default=[], description="The range test of the chosen optimizer.")
    held_out: int | None = Field(default=None, description="Samples the trials were scored on.")
    trials: list[RecipeTrial] = []
    curves: dict[str, list[LrPoint]] = Field(default={}, description="The range test of each optimizer tried.")
    proposals: dict[str, dict[str, float]] = Field(
        default={}, description="Per optimizer, the curve's readings: min_over_10, steepest and "
        "the proposed rate (the lower of the two) that the trials start from.")
    probe_steps: int | None = Field(default=None, description="Training steps of each trial.")
    val_loss_before: float | None = Field(default=None, description="Held-out loss of the "
                                          "model before any training, for scale.")
    seconds: float | None = Field(default=None, description="Time spent choosing.")
    chosen: dict[str, Any] | None = None


class Training(Part):
    optimizer: str
    batch_size: int
    epochs_max: int
    processes: int
    device: str
    train_samples: int
    val_samples: int
    lr_range_test: LrRangeTest | None = None
    lr: float
    ranks_identical: bool | None = None
    epochs: list[Epoch] = []
    best_epoch: int | None = None
    stopped_early_at_epoch: int | None = None
    restored_best_weights: bool | None = None
    seconds: float | None = Field(default=None, description="Training time, the choice of "
                                  "recipe (lr_range_test.seconds) excluded.")
    student_accuracy_before_training: float | None = None
    objective: str | None = Field(default=None, description="What the student learned (FFN "
                                  "recovery: the parent's outputs).")
    trained_tensors: list[str] = Field(default=[], description="FFN recovery: the pruned "
                                       "initializers trained; every other weight is frozen.")


class TorchReport(Report):
    """What ``app.engine.pytorch.report.compare`` measured, shared by the torch techniques."""

    parent: TorchStats
    result: TorchStats
    verification: Verification
    device: Device | None = None
    latency: list[ComparePoint] = []
    host_load: HostLoad | None = None
    provider: str | None = None
    skipped: list[Skipped] = []
    accuracy: Accuracy | None = None
    fidelity: Fidelity | None = None
    inputs: Inputs | None = None
    verdict: Verdict
    environment: Environment | None = None
    notes: list[str] = []


class LayerShapes(Part):
    before: list[int]
    after: list[int] | None = None


class FFNBlock(Part):
    """One transformer feed-forward block pruned in the ONNX graph (``prune.ffn``)."""

    name: str = Field(description="Node name of its (first) up-projection.")
    activation: str
    up: list[str] = Field(default=[], description="Up-projection node names (two when gated).")
    down: str
    neurons_before: int
    neurons_after: int
    protected: bool = False


class FFNPruning(Part):
    blocks: list[FFNBlock] = []
    importance_source: str
    attention_heads: str = Field(description="Whether attention heads were pruned, and why not.")
    recovery: str


class StructuredPruning(Part):
    ratio: float
    importance: str
    round_to: int | None = None
    method: Literal["torch", "onnx_ffn"] | None = None
    protected_layers: list[str] = []
    pruned_layers: list[str] = []
    partial: str | None = None  # why only some groups of channels were pruned
    layer_shapes: dict[str, LayerShapes] = {}
    ffn: FFNPruning | None = Field(default=None, description="The transformer (onnx) route.")


class PruneStructuredReport(TorchReport):
    technique: Literal["prune.structured"]
    pruning: StructuredPruning
    training: Training | None = None


class LayerSparsity(Part):
    weight: str
    elements: int
    parent_zeros: float
    sparsity: float


class Sparsity(Part):
    target: float
    scope: str
    achieved: float
    layers: list[LayerSparsity] = []


class PruneUnstructuredReport(TorchReport):
    technique: Literal["prune.unstructured"]
    sparsity: Sparsity


class StudentPruning(Part):
    protected_layers: list[str] = []
    pruned_layers: list[str] = []


class StudentInfo(Part):
    kind: Literal["pruned_teacher", "uploaded"]
    pruned_ratio: float | None = None
    model_id: str | None = None
    pruning: StudentPruning | None = None
    source_size_bytes: int | None = None


class Loss(Part):
    temperature: float
    alpha: float
    formula: str


class DistillReport(TorchReport):
    technique: Literal["distill"]
    student: StudentInfo
    loss: Loss
    training: Training | None = None


class ConvertParent(Part):
    format: str
    size_bytes: int | None = None
    keras_classes: list[str] | None = Field(
        default=None, description="Keras models: every class the checked config names (all on the allow-list).")


class ConvertResult(Part):
    format: str
    size_bytes: int
    opset: int
    inputs: list[ValueSpec] = []
    outputs: list[ValueSpec] = []


class ConvertVerification(Part):
    onnxruntime_loaded: bool
    output_shapes: list[list[int]] = []
    output_shapes_match_program: bool
    max_abs_error: float
    generated_input_shapes: list[list[int]] = []


class Sandbox(Part):
    """What confinement the conversion's child process actually got."""

    network_isolated: bool
    read_only_filesystem: bool
    capabilities_dropped: bool
    user: str
    limits: dict[str, int] | None = Field(
        default=None, description="Resource limits set in the child (file size, address space, CPU seconds).")


class ConvertOnnxReport(Report):
    technique: Literal["convert.onnx"]
    parent: ConvertParent
    result: ConvertResult
    verification: ConvertVerification
    symbolic_batch: bool
    torch: str | None = None
    keras: str | None = Field(default=None, description="Keras models: the Keras version that loaded it.")
    notes: list[str] = []
    sandbox: Sandbox | None = None


# --- export -------------------------------------------------------------------------------

class ExportSource(Part):
    """What produced the exported model: a job, or the pipeline step before."""

    technique: str
    job_id: str | None = None


class ExportMlflowReport(Report):
    """Where export.mlflow put the model: the run (params, metrics, report artifacts) and the
    registered model version."""

    technique: Literal["export.mlflow"]
    tracking_uri: str
    experiment: str
    experiment_id: str
    run_id: str
    run_url: str
    registered_model_name: str | None = None
    model_version: str | None = Field(default=None, description="null when no registered_model_name was given.")
    model_version_status: str | None = None
    model_sha256: str = Field(description="sha256 of the ONNX file sent (the model version's model.onnx).")
    model_size_bytes: int
    source: ExportSource | None = Field(default=None, description="null for a model no job produced (an upload).")
    params_logged: int
    metrics_logged: int
    artifacts: list[str] = Field(default=[], description="Paths logged in the run, relative to its artifact root.")
    notes: list[str] = []


# --- pipeline and the union -----------------------------------------------------------------

class PipelineStep(Part):
    technique: str
    params: dict[str, Any] = {}
    output_model_id: str | None = Field(default=None, description="The model this step produced, if any.")
    report: TechniqueReport | None = None


class EndToEnd(Part):
    """A pipeline's job input vs its last output, measured together in one run."""

    parent: SizeCount | None = Field(default=None, description="The job's input (after normalisation).")
    result: SizeCount | None = Field(default=None, description="The last model a step produced.")
    size_ratio: float | None = None
    comparison: list[ComparePoint] = []
    host_load: HostLoad | None = None
    fidelity: Fidelity | None = None
    accuracy: Accuracy | None = None
    tolerance: Tolerance | None = Field(
        default=None, description="The last model-producing step's tolerance, applied end to end.")
    summary: str = Field(description="The figures in a sentence, or why they could not be measured.")
    notes: list[str] = []


class PipelineReport(Report):
    """A job of several steps: each step's own report, in order, each step fed the one before's
    output model."""

    technique: Literal["pipeline"]
    model_id: str | None = Field(default=None, description="The job's input model.")
    output_model_id: str | None = Field(default=None, description="The last model a step produced.")
    steps: list[PipelineStep]
    end_to_end: EndToEnd | None = Field(
        default=None, description="With two or more model-producing steps: the job's input vs "
        "the final output, measured together (each step's report compares with the step before).")


TechniqueReport = Annotated[
    Union[BenchmarkReport, CompareReport, EvaluateReport, QuantizeReport, QuantizeAutoReport,
          OptimizeGraphReport, PruneStructuredReport, PruneUnstructuredReport, DistillReport, ConvertOnnxReport,
          ExportMlflowReport],
    Field(discriminator="technique"),
]
"""The report of one technique."""

AnyReport = Annotated[Union[TechniqueReport, PipelineReport], Field(discriminator="technique")]
"""What ``GET /v1/jobs/{id}/report`` returns: a technique's report or a pipeline's."""

PipelineStep.model_rebuild()
PipelineReport.model_rebuild()
REPORTS: TypeAdapter[Any] = TypeAdapter(AnyReport)


def pipeline_report(model_id: str | None, output_model_id: str | None,
                    steps: list[dict[str, Any]], end_to_end: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report of a pipeline job, checked. ``steps``: one ``{"technique", "params",
    "output_model_id", "report"}`` per step, in order (``report``: the step's own report)."""
    return checked({"schema_version": SCHEMA_VERSION, "technique": "pipeline", "model_id": model_id,
                    "output_model_id": output_model_id, "steps": steps,
                    **({"end_to_end": end_to_end} if end_to_end else {})})


def checked(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` unchanged, after checking it matches its technique's model (raises
    pydantic.ValidationError otherwise: an engine bug, never the user's input)."""
    REPORTS.validate_python(report)
    return report


def parse(report: Any) -> BaseModel:
    """A stored report as its model (raises pydantic.ValidationError when it does not match)."""
    return REPORTS.validate_python(report)
