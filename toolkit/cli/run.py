"""``tk run``: every option of a run, turned into a validated :class:`toolkit.run.settings.RunSettings`
and handed to :func:`toolkit.run.job.execute_run`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from toolkit.cli.options import (DEFAULT_REPORTS, DEFAULT_STORE, BatchSizeOption, DataArgument, PluginOption,
                                 ReportsOption, RevealIdsOption, SeedOption, SourceOption, StoreOption,
                                 TemplateDirOption, WeightsOption, names)

BackbonesOption = Annotated[str, typer.Option(
    "--backbone", "-b", help="all (the built-in CNNs and every encoder registered with `tk encoders add`), or a "
                             "comma list of backbone names.")]
PatientFromOption = Annotated[Optional[str], typer.Option(
    "--patient-from", metavar="REGEX", help="Take each image's patient id from its path (relative to DATA): the "
                                            "regex's first group, or its whole match; an image whose path does not "
                                            "match has no patient id.")]
ClinicalOption = Annotated[Optional[Path], typer.Option(
    "--clinical", metavar="FILE.csv", help="Patient-level clinical variables: a CSV with a patient_id column, joined "
                                           "to the images by patient id.")]
ClinicalTypeOption = Annotated[Optional[List[str]], typer.Option(
    "--clinical-type", metavar="NAME=KIND", help="Type of a clinical column: categorical, numeric or drop (overrides "
                                                 "the inference; repeatable).")]
AnalysesOption = Annotated[str, typer.Option("--analysis", help="all, none, or a comma list of analyses.")]
ExportsOption = Annotated[Optional[str], typer.Option(
    "--export", help="Comma list of exporters (default: the HTML report); none for no export.")]
PrecisionOption = Annotated[str, typer.Option(
    "--precision", help="fp32 | bf16 | fp16 | int8: numeric precision of extraction; bf16, fp16 and int8 embeddings "
                        "form their own sets, with their parity against fp32 recorded. fp16 is for GPUs.")]
StainOption = Annotated[str, typer.Option(
    "--stain", help="none | macenko | reinhard | a plugin's normaliser: stain normalisation of every image before "
                    "embedding; normalised embeddings form their own sets.")]
StainReferenceOption = Annotated[Optional[Path], typer.Option(
    "--stain-reference", metavar="IMAGE", help="Image whose stains --stain normalises to (default: the method's "
                                               "built-in reference).")]
AnalysisTimeoutOption = Annotated[Optional[float], typer.Option(
    "--analysis-timeout", min=0.01, help="Give up on an analysis after this many seconds (recorded as failed).")]
SetOption = Annotated[Optional[List[str]], typer.Option(
    "--set", metavar="NAME.KEY=VALUE", help="An analysis setting, e.g. --set probe.c=0.5 (repeatable; `tk plugins` "
                                            "lists them).")]
EngineOption = Annotated[str, typer.Option(
    "--engine", help="local | ray: embed in this process, or on a Ray cluster that writes Parquet shards the run "
                     "ingests (pip install 'tk-embeddings\\[ray]').")]  # \[: a literal bracket, not Rich markup
RayAddressOption = Annotated[Optional[str], typer.Option(
    "--ray-address", metavar="auto|ray://HOST:PORT", help="Ray cluster for --engine ray (default: start a local Ray "
                                                          "with this machine's cores).")]
ShardsOption = Annotated[Optional[Path], typer.Option(
    "--shards", metavar="DIR", help="Shard folder of --engine ray, readable by every worker (default: beside the "
                                    "store, tk.shards/).")]
RayCpusOption = Annotated[float, typer.Option("--ray-cpus-per-actor", min=0,
                                              help="CPUs per embedding actor of --engine ray.")]
RayGpusOption = Annotated[float, typer.Option("--ray-gpus-per-actor", min=0,
                                              help="GPUs per embedding actor of --engine ray.")]


def run(
    context: typer.Context,
    data: DataArgument = None,
    backbone: BackbonesOption = "all",
    weights: WeightsOption = "auto",
    store: StoreOption = DEFAULT_STORE,
    out: ReportsOption = DEFAULT_REPORTS,
    source: SourceOption = "auto",
    patient_from: PatientFromOption = None,
    clinical: ClinicalOption = None,
    clinical_type: ClinicalTypeOption = None,
    analysis: AnalysesOption = "all",
    export: ExportsOption = None,
    seed: SeedOption = 0,
    batch_size: BatchSizeOption = 32,
    precision: PrecisionOption = "fp32",
    reveal_ids: RevealIdsOption = False,
    template_dir: TemplateDirOption = None,
    stain: StainOption = "none",
    stain_reference: StainReferenceOption = None,
    analysis_timeout: AnalysisTimeoutOption = None,
    set_values: SetOption = None,
    engine: EngineOption = "local",
    ray_address: RayAddressOption = None,
    shards: ShardsOption = None,
    ray_cpus_per_actor: RayCpusOption = 1.0,
    ray_gpus_per_actor: RayGpusOption = 0.0,
    plugin: PluginOption = None,
) -> None:
    """Embed images with the selected backbones, store, analyse and report."""
    from toolkit import console
    from toolkit.ingest.clinical import parse_overrides
    from toolkit.run.job import execute_run
    from toolkit.run.settings import RunSettings

    settings = RunSettings(
        data=data, backbones=names(backbone), weights=weights, store=store, out=out, plugins=context.obj.plugins,
        source=source, patient_from=patient_from, clinical=clinical,
        clinical_types=parse_overrides(clinical_type or []), analyses=[] if analysis == "none" else names(analysis),
        exports=None if export is None else [] if export == "none" else names(export), seed=seed,
        batch_size=batch_size, precision=precision, stain=stain, stain_reference=stain_reference,
        reveal_ids=reveal_ids, template_dir=template_dir, analysis_timeout=analysis_timeout,
        analysis_settings=list(set_values or []), engine=engine, ray_address=ray_address, shards=shards,
        ray_cpus_per_actor=ray_cpus_per_actor, ray_gpus_per_actor=ray_gpus_per_actor)
    summary = execute_run(settings)
    for path in summary.outputs:
        print(path)
    state = "finished" if not summary.failures else f"finished with {len(summary.failures)} failure(s)"
    console.info(f"run {summary.run_id} {state}: {summary.n_images} images, {summary.n_skipped} skipped; store {store}")
    raise typer.Exit(summary.exit_code)
