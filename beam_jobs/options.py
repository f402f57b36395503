"""The Beam jobs' command-line flags, declared once (light: no Beam, NumPy or pyarrow import).

Each ``add_*_arguments(parser)`` is called twice: by the job's ``PipelineOptions`` subclass
(``_add_argparse_args``, so Beam parses the flags with every other pipeline option) and by the job's fast
parser in :mod:`rnnstream.beam_jobs.cli` (``rnnstream COMMAND --help`` and the first parse, before Beam is
imported). Beam registers every ``PipelineOptions`` subclass in one parser, so a flag two jobs share is
added once (:func:`_add` skips a flag already there).

Also here, because they need nothing heavy: :func:`feature_config_from_options` (the feature flags ->
:class:`~rnnstream.pipeline.config.FeatureConfig`) and :func:`resolve_runner_aliases`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rnnstream.pipeline.config import AudioConfig, FeatureConfig, SensorConfig
from rnnstream.pipeline.errors import ConfigError

#: Inputs per Parquet shard when neither ``--num-shards`` nor ``--inputs-per-shard`` is given.
INPUTS_PER_SHARD = 250
#: Default shards per DirectRunner worker (``--direct_num_workers`` > 1), at least: enough tasks that the
#: workers finish together. On the DaskRunner: at least one per ``--dask_npartitions`` partition.
SHARDS_PER_WORKER = 4
#: Default shard count's ceiling (raised to that minimum when it is higher).
MAX_DEFAULT_SHARDS = 64
#: ``rnnstream infer --format`` values; the predictions file is ``predictions.<format>``.
PREDICTION_FORMATS = ("jsonl", "parquet")

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
_RUNNER_ALIASES = {"DaskRunner": DASK_RUNNER}

#: The batch jobs' runner (featurize, infer) when no ``--runner`` is given: Beam's FnApiRunner, the runner the
#: DirectRunner itself ends up running them on, without the DirectRunner's first attempt at the PrismRunner
#: (Beam >= 2.6x), which downloads the Prism binary at run time and, where it cannot, falls back after leaving
#: three temporary folders behind per run. ``--runner=DirectRunner`` (or PrismRunner) still asks for that path.
BATCH_DEFAULT_RUNNER = "FnApiRunner"

# (flag, AudioConfig/SensorConfig field, type, choices, help). The fields' defaults are shown in --help;
# the flags themselves default to None so that --feature-config's values stay unless a flag is given.
_AUDIO_SPECS: tuple[tuple[str, str, Any, tuple[str, ...] | None, str], ...] = (
    ("--sample-rate", "sample_rate", int, None, "feature sample rate in Hz (other rates are resampled)"),
    ("--feature", "feature", str, ("logmel", "mfcc"), "feature kind"),
    ("--n-mels", "n_mels", int, None, "mel bands"),
    ("--n-mfcc", "n_mfcc", int, None, "MFCC coefficients (--feature mfcc)"),
    ("--win-ms", "win_ms", float, None, "analysis window (ms)"),
    ("--hop-ms", "hop_ms", float, None, "hop between frames (ms)"),
    ("--n-fft", "n_fft", int, None, "FFT size, >= the window length (None: the window length)"),
    ("--f-min", "f_min", float, None, "lowest mel frequency (Hz)"),
    ("--f-max", "f_max", float, None, "highest mel frequency (Hz; None: Nyquist)"),
    ("--window", "window", str, ("hann", "hamming"), "window function"),
    ("--log-eps", "log_eps", float, None, "added before the log"),
    ("--channel", "channel", int, None, "pick one channel (None: downmix)"),
    ("--stack", "stack", int, None, ("analysis frames side by side per model frame (low frame rate: the model's "
                                     "recurrent layers step once per stack hops)")),
)
_SENSOR_SPECS: tuple[tuple[str, str, Any, tuple[str, ...] | None, str], ...] = (
    ("--timestamp-column", "timestamp_column", str, None, "column of timestamps in seconds"),
    ("--rate-hz", "rate_hz", float, None, "frame rate of the resampled sensor grid (Hz)"),
    ("--max-gap-s", "max_gap_s", float, None, "a longer gap between readings starts a new segment"),
    ("--gap-policy", "gap_policy", str, ("split", "flag"), "split a table at gaps, or flag them"),
)
AUDIO_FLAGS = tuple(spec[1] for spec in _AUDIO_SPECS)
SENSOR_FLAGS = tuple(spec[1] for spec in _SENSOR_SPECS)


def _add(parser: Any, flag: str, **kwargs: Any) -> None:
    """``parser.add_argument`` unless another job's options registered the same flag already."""
    if flag in getattr(parser, "_option_string_actions", {}):
        return
    parser.add_argument(flag, **kwargs)


def add_io_arguments(parser: Any) -> None:
    """``--input`` and ``--output`` (every job)."""
    _add(parser, "--input", dest="inputs", action="extend", nargs="+", default=None, metavar="PATH",
         help="files, directories (all files under them) or globs; local, gs:// or s3://. Repeatable.")
    _add(parser, "--output", dest="output", default=None, metavar="DIR", help="output directory (created if absent)")


def add_input_arguments(parser: Any) -> None:
    """``--input``, ``--output``, ``--manifest``, ``--label-pattern`` (the batch jobs)."""
    add_io_arguments(parser)
    _add(parser, "--manifest", dest="manifest", default=None, metavar="FILE",
         help="CSV or JSONL with a 'path' column, optional 'label'; other columns become metadata. Without "
         "--input, its rows are the inputs (relative paths resolve against the manifest's folder).")
    _add(parser, "--label-pattern", dest="label_pattern", default=None, metavar="REGEX",
         help=r"regex searched in each file name: group 'label' is the label, other named groups metadata, "
         r"e.g. '(?P<label>\d)_(?P<speaker>[a-z]+)_(?P<take>\d+)\.wav'")


def _config_flag(parser: Any, spec: tuple[str, str, Any, tuple[str, ...] | None, str], section: Any) -> None:
    flag, name, type_, choices, help_ = spec
    default = getattr(section, name)
    _add(parser, flag, dest=name, type=type_, choices=choices, default=None,
         help=f"{help_} (default: {default}, or --feature-config's)")


def add_feature_arguments(parser: Any) -> None:
    """Every :class:`FeatureConfig` field as a flag; ``--feature-config`` loads a JSON file (flags override it)."""
    _add(parser, "--feature-config", dest="feature_config", default=None, metavar="JSON",
         help="feature_config.json to start from (default: the audio defaults below)")
    audio, sensor = AudioConfig(), SensorConfig()
    for spec in _AUDIO_SPECS:
        _config_flag(parser, spec, audio)
    _add(parser, "--no-resample", dest="no_resample", action="store_true", default=False,
         help="refuse (dead-letter) files whose rate differs from --sample-rate instead of resampling them")
    _add(parser, "--sensor-columns", dest="sensor_columns", default=None, metavar="A,B,...",
         help="comma-separated channel columns; setting it makes the job featurize sensor tables (CSV/Parquet)")
    for spec in _SENSOR_SPECS:
        _config_flag(parser, spec, sensor)


#: ``AudioLimits()``'s bounds, repeated here for --help (this module imports nothing heavy; a test keeps them equal).
DECODE_DEFAULTS = {"max_seconds": 3600.0, "max_decoded_mb": 512.0, "min_sample_rate": 1000}


def add_decode_arguments(parser: Any) -> None:
    """Decoding bounds of the batch jobs (:class:`rnnstream.pipeline.audio_io.AudioLimits`); 0 switches one off."""
    d = DECODE_DEFAULTS
    _add(parser, "--max-seconds", dest="max_seconds", type=float, default=None, metavar="S",
         help=f"dead-letter audio files longer than S seconds, checked from the header before decoding "
         f"(default: {d['max_seconds']:g}; 0: no bound)")
    _add(parser, "--max-decoded-mb", dest="max_decoded_mb", type=float, default=None, metavar="MB",
         help=f"dead-letter audio files whose bytes, decoded samples or resampled copy would pass MB MiB "
         f"(default: {d['max_decoded_mb']:g}; 0: no bound)")
    _add(parser, "--min-sample-rate", dest="min_sample_rate", type=int, default=None, metavar="HZ",
         help=f"dead-letter audio files whose sample rate is below HZ, unless it is the model's own rate "
         f"(default: {d['min_sample_rate']}; 0: no bound)")


def audio_limits_from_options(opts: Any) -> Any:
    """The :class:`~rnnstream.pipeline.audio_io.AudioLimits` of ``--max-seconds``, ``--max-decoded-mb``,
    ``--min-sample-rate`` (``AudioLimits()``'s value for a flag not given; 0 for no bound).

    Raises:
        ConfigError: a negative value.
    """
    from rnnstream.pipeline.audio_io import DEFAULT_LIMITS, AudioLimits

    values = {f: getattr(opts, f, None) for f in DECODE_DEFAULTS}
    for flag, value in values.items():
        if value is not None and value < 0:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 0 (0: no bound), got {value:g}")
    seconds, mb, rate = values["max_seconds"], values["max_decoded_mb"], values["min_sample_rate"]
    return AudioLimits(
        max_seconds=DEFAULT_LIMITS.max_seconds if seconds is None else (seconds or None),
        max_bytes=DEFAULT_LIMITS.max_bytes if mb is None else (int(mb * 2**20) or None),
        min_rate=DEFAULT_LIMITS.min_rate if rate is None else max(1, rate),
    )


def add_featurize_arguments(parser: Any) -> None:
    """Options of ``rnnstream featurize`` besides the input and feature flags."""
    add_decode_arguments(parser)
    _add(parser, "--num-shards", dest="num_shards", type=int, default=None,
         help=f"Parquet shards, the unit of parallel work (default: one per --inputs-per-shard inputs, at least "
         f"{SHARDS_PER_WORKER} per --direct_num_workers worker or one per --dask_npartitions partition, at most "
         f"{MAX_DEFAULT_SHARDS} unless that minimum is higher)")
    _add(parser, "--inputs-per-shard", dest="inputs_per_shard", type=int, default=None, metavar="N",
         help=f"inputs per Parquet shard when --num-shards is not given (default: {INPUTS_PER_SHARD})")


def add_infer_arguments(parser: Any) -> None:
    """Options of ``rnnstream infer`` besides the input flags."""
    add_decode_arguments(parser)
    _add(parser, "--model", dest="model", default=None, help="an exported .onnx file or a checkpoint (.pt); required")
    _add(parser, "--format", dest="format", choices=PREDICTION_FORMATS, default="jsonl",
         help="predictions file format")
    _add(parser, "--batch-size", dest="batch_size", type=int, default=1,
         help="examples per run_inference call (must be 1 on the DaskRunner)")
    _add(parser, "--threads", dest="threads", type=int, default=None,
         help="intra-op threads of each loaded model (default: the backend's)")


def add_stream_job_arguments(parser: Any) -> None:
    """Options of ``rnnstream stream-job`` besides ``--input``/``--output``."""
    _add(parser, "--model", dest="model", default=None, help="an .onnx export or a checkpoint; required")
    _add(parser, "--input-dir", dest="input_dir", default=None,
         help="watch DIR/*.jsonl for new message files while the job runs (streaming)")
    _add(parser, "--watch-seconds", dest="watch_seconds", type=float, default=None,
         help="stop watching --input-dir after this many seconds (default: run until cancelled)")
    _add(parser, "--poll-interval", dest="poll_interval", type=float, default=2.0,
         help="seconds between directory listings of --input-dir")
    _add(parser, "--pubsub-subscription", dest="pubsub_subscription", default=None, help="read from Pub/Sub")
    _add(parser, "--pubsub-topic", dest="pubsub_topic", default=None, help="read from Pub/Sub")
    _add(parser, "--pubsub-timestamp-attribute", dest="pubsub_timestamp_attribute", default=None,
         help="message attribute holding the event time (default: the publish time)")
    _add(parser, "--kafka-bootstrap-servers", dest="kafka_bootstrap_servers", default=None, help="read from Kafka")
    _add(parser, "--kafka-topic", dest="kafka_topic", action="append", default=None, help="Kafka topic (repeatable)")
    _add(parser, "--on-gap", dest="on_gap", choices=("fill", "reset"), default="fill",
         help="a chunk missing for --gap-timeout: fill it with zeros, or reset the stream's state")
    _add(parser, "--gap-timeout", dest="gap_timeout", type=float, default=5.0,
         help="seconds to wait for a missing chunk once a later one arrived")
    _add(parser, "--idle-timeout", dest="idle_timeout", type=float, default=30.0,
         help="seconds without messages before a stream is evicted (snapshot emitted)")
    _add(parser, "--max-buffer", dest="max_buffer", type=int, default=64,
         help="reorder buffer bound: chunks at most this many seqs ahead wait; further ones are dead letters")
    _add(parser, "--chunk-size", dest="chunk_size", type=int, default=None,
         help="exact samples (audio) or rows (sensor) per chunk; the last may be shorter (default: any)")
    _add(parser, "--time-domain", dest="time_domain", choices=("event", "processing"), default=None,
         help="timer domain (default: event; processing needs a runner with processing-time timers and, on "
         "the DirectRunner, rules out --input-dir)")
    _add(parser, "--no-per-stream-metrics", dest="per_stream_metrics", action="store_false", default=True,
         help="keep only job-wide Beam counters (per-stream counters cost one metric per stream)")
    _add(parser, "--no-resample", dest="no_resample", action="store_true", default=False,
         help="dead-letter audio streams whose sample_rate differs from the model's instead of resampling them")
    _add(parser, "--local-state-cache-mb", dest="local_state_cache_mb", type=int, default=0,
         help="the SDK state cache of Beam's in-process FnApiRunner worker (--direct_running_mode=in_memory), in MB: "
         "0 (default) turns it off, as Beam's SDK worker processes run by default; Beam itself makes it 100 MB "
         "there whatever the options say, and sizes every cached value by walking all loaded modules (see "
         "docs/stream_job.md). Other runners and modes take --max_cache_memory_usage_mb")


# ----------------------------------------------------------------------------------------------
# Parsed options -> configs
# ----------------------------------------------------------------------------------------------


def feature_config_from_options(opts: Any) -> FeatureConfig:
    """Build the :class:`FeatureConfig`: ``--feature-config`` (or the defaults), then the flags given.

    ``opts``: the parsed feature flags (``FeatureOptions`` or an ``argparse.Namespace``).

    Raises:
        ConfigError: inconsistent or out-of-range values, or audio flags mixed with a sensor config.
    """
    base = FeatureConfig.load(opts.feature_config) if opts.feature_config else None
    sensor_wanted = opts.sensor_columns is not None or any(getattr(opts, f) is not None for f in SENSOR_FLAGS)
    kind = base.kind if base is not None and not sensor_wanted else ("sensor" if sensor_wanted else "audio")
    if kind == "audio":
        section = base.audio if base is not None and base.kind == "audio" else AudioConfig()
        changes = {f: getattr(opts, f) for f in AUDIO_FLAGS if getattr(opts, f) is not None}
        if opts.no_resample:
            changes["resample"] = False
        try:
            audio = AudioConfig(**{**section.__dict__, **changes})
        except TypeError as exc:
            raise ConfigError(f"bad audio options: {exc}") from None
        return FeatureConfig(kind="audio", audio=audio, sensor=None)
    audio_given = [f for f in AUDIO_FLAGS if getattr(opts, f) is not None] + (["no_resample"] if opts.no_resample else [])
    if audio_given:
        raise ConfigError(f"audio options {audio_given} do not apply to sensor tables (--sensor-columns is set)")
    sensor_base = base.sensor if base is not None and base.kind == "sensor" else SensorConfig()
    changes = {f: getattr(opts, f) for f in SENSOR_FLAGS if getattr(opts, f) is not None}
    if opts.sensor_columns is not None:
        changes["columns"] = tuple(c.strip() for c in opts.sensor_columns.split(",") if c.strip())
    return FeatureConfig(kind="sensor", audio=None, sensor=SensorConfig(**{**sensor_base.__dict__, **changes}))


def resolve_runner_aliases(argv: Sequence[str], default_runner: str | None = None) -> list[str]:
    """``--runner=DaskRunner`` (or ``--runner DaskRunner``) -> Beam's fully qualified DaskRunner name; with
    ``default_runner``, ``--runner=default_runner`` added when ``argv`` names no runner.

    Beam knows the DaskRunner only by its module path; the short name is what people type.
    """
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--runner="):
            name = arg.split("=", 1)[1]
            out[i] = "--runner=" + _RUNNER_ALIASES.get(name, name)
        elif arg == "--runner" and i + 1 < len(out):
            out[i + 1] = _RUNNER_ALIASES.get(out[i + 1], out[i + 1])
    if default_runner is not None and not names_runner(out):
        out.append(f"--runner={default_runner}")
    return out


def names_runner(argv: Sequence[str]) -> bool:
    """Whether ``argv`` chooses a runner (``--runner=X`` or ``--runner X``)."""
    return any(a.startswith("--runner=") or (a == "--runner" and i + 1 < len(argv)) for i, a in enumerate(argv))
