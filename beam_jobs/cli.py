"""``rnnstream featurize``, ``rnnstream infer`` and ``rnnstream stream-job``: the light command-line side.

The parsers are built from the flag declarations of :mod:`rnnstream.beam_jobs.options` (the same ones the
jobs' ``PipelineOptions`` use), so ``--help`` and bad flag values are answered before ``apache_beam`` is
imported. Options the parsers do not know pass through to Beam (``--runner``, ``--direct_num_workers``,
``--dask_client_address``, ...); the job refuses those Beam does not know either.

Each job prints its summary as JSON on stdout. ``featurize`` and ``infer`` exit 1 when every input became
a dead letter (the summary is still written and printed).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from rnnstream._cli_support import Command, CommandFailed, new_parser, print_json
from rnnstream.beam_jobs.options import (
    add_feature_arguments,
    add_featurize_arguments,
    add_infer_arguments,
    add_input_arguments,
    add_io_arguments,
    add_stream_job_arguments,
)

_BEAM = "Any Beam pipeline option (--runner, --direct_num_workers, --dask_client_address, ...) passes through."


def check_dead_letters(job: str, summary: dict[str, Any], output_dir: str) -> None:
    """Raise :class:`CommandFailed` when every input of a finished batch job became a dead letter."""
    inputs, dead = int(summary.get("inputs") or 0), int(summary.get("dead_letters") or 0)
    if inputs and dead >= inputs:
        from rnnstream.pipeline.dataset import DEAD_LETTER_FILE

        kinds = summary.get("dead_letter_kinds") or {}
        why = f" ({', '.join(f'{k}: {n}' for k, n in kinds.items())})" if kinds else ""
        where = os.path.join(output_dir, DEAD_LETTER_FILE) if "://" not in output_dir else f"{output_dir}/{DEAD_LETTER_FILE}"
        raise CommandFailed(f"all {inputs} input(s) became dead letters{why}; see {where}")


# ----------------------------------------------------------------------------------------------
# featurize
# ----------------------------------------------------------------------------------------------


def build_featurize_parser() -> argparse.ArgumentParser:
    parser = new_parser(
        "rnnstream featurize",
        "Beam batch job: featurize audio files or sensor tables into Parquet shards + stats. " + _BEAM,
        allow_abbrev=False,
    )
    add_input_arguments(parser.add_argument_group("inputs and outputs"))
    add_feature_arguments(parser.add_argument_group("features"))
    add_featurize_arguments(parser.add_argument_group("job"))
    return parser


def _run_featurize(args: argparse.Namespace, argv: list[str]) -> int:
    from rnnstream.beam_jobs import featurize

    featurize.run(argv)
    summary = featurize.read_summary(args.output)
    print_json(summary)
    check_dead_letters("featurize", summary, args.output)
    return 0


FEATURIZE = Command("featurize", build_featurize_parser, _run_featurize, passthrough=True)


# ----------------------------------------------------------------------------------------------
# infer
# ----------------------------------------------------------------------------------------------


def build_infer_parser() -> argparse.ArgumentParser:
    parser = new_parser(
        "rnnstream infer",
        "Beam batch inference (RunInference) over a featurized dataset or raw files; writes predictions "
        "(label: the known label, predicted: the model's answer), dead letters and a summary. " + _BEAM,
        allow_abbrev=False,
    )
    add_input_arguments(parser.add_argument_group("inputs and outputs"))
    add_infer_arguments(parser.add_argument_group("model"))
    return parser


def _run_infer(args: argparse.Namespace, argv: list[str]) -> int:
    from rnnstream.beam_jobs import infer

    summary = infer.run(argv)
    print_json(summary)
    check_dead_letters("infer", summary, args.output)
    return 0


INFER = Command("infer", build_infer_parser, _run_infer, passthrough=True)


# ----------------------------------------------------------------------------------------------
# stream-job
# ----------------------------------------------------------------------------------------------


def build_stream_job_parser() -> argparse.ArgumentParser:
    parser = new_parser(
        "rnnstream stream-job",
        "Beam streaming job: chunk messages -> per-stream stateful RNN inference with ordering, gap handling "
        "and eviction. See docs/stream_job.md. " + _BEAM,
        allow_abbrev=False,
    )
    add_io_arguments(parser.add_argument_group("replay input (bounded) and output"))
    add_stream_job_arguments(parser.add_argument_group("job"))
    return parser


def _run_stream_job(args: argparse.Namespace, argv: list[str]) -> int:
    from rnnstream.beam_jobs import stream_job

    summary = stream_job.run_and_summarize(argv)
    if summary is not None:
        print_json(summary)
    return 0


STREAM_JOB = Command("stream-job", build_stream_job_parser, _run_stream_job, passthrough=True)
