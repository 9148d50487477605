"""``tk train [DATA] --backbone NAME``: fine-tune a backbone on held-out patients (toolkit.models.training).

Prints the trained variant's name (``<backbone>@<train_id>``) on stdout, one per line (four with
``--ablation``, then the table of paired differences); progress and metrics go to stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from toolkit import BatchSizeOption, DataArgument, PluginOption, SeedOption, SourceOption, WeightsOption, hookimpl
from toolkit.plugins.commands.train_report import report_section

if TYPE_CHECKING:
    from toolkit import ReportContext, ReportSection


def _summary(metrics) -> str:  # noqa: ANN001 (a pandas DataFrame; pandas is imported lazily)
    """One line: held-out balanced accuracy and AUC with their CIs."""
    parts = []
    for metric in ("balanced_accuracy", "roc_auc"):
        row = metrics[metrics["metric"] == metric].iloc[0]
        parts.append(f"{metric} {row.value:.3f} (95% CI {row.ci_low:.3f}–{row.ci_high:.3f})")
    return ", ".join(parts)


def train_command(
    context: typer.Context,
    backbone: Annotated[str, typer.Option("--backbone", help="Backbone to fine-tune (see `tk plugins`).")],
    data: DataArgument = None,
    weights: WeightsOption = "auto",
    augment: Annotated[bool, typer.Option(
        "--augment/--no-augment", help="Flip, rotation, zoom, translation and H&E stain jitter while training.")] = False,
    balance: Annotated[str, typer.Option("--balance", help="weights | oversample | none.")] = "weights",
    epochs: Annotated[int, typer.Option(
        "--epochs", help="Most epochs per phase (early stopping may end sooner).")] = 5,
    unfreeze: Annotated[int, typer.Option(
        "--unfreeze", help="Weight layers at the top of the backbone to fine-tune after the head (0: train the head "
                           "only).")] = 10,
    learning_rate: Annotated[float, typer.Option(
        "--learning-rate", help="Head phase; fine-tuning uses a tenth.")] = 1e-3,
    batch_size: BatchSizeOption = 16,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Share of patients held out.")] = 0.25,
    patience: Annotated[int, typer.Option(
        "--patience", help="Epochs without a better held-out loss before stopping.")] = 2,
    seed: SeedOption = 0,
    ablation: Annotated[bool, typer.Option(
        "--ablation", help="Train with and without augmentation and class weights (4 runs) and compare them.")] = False,
    store: Annotated[Path, typer.Option(
        "--store", help="DuckDB store; models go to tk_models/ beside it.")] = Path("tk.duckdb"),
    source: SourceOption = "auto",
    plugin: PluginOption = None,
) -> None:
    """Fine-tune a backbone with a softmax head; the result becomes the backbone <NAME>@<train id>."""
    from toolkit import TrainSettings, console, train

    settings = TrainSettings(data=data, backbone=backbone, weights=weights, store=store, plugins=context.obj.plugins,
                             source=source, augment=augment, balance=balance, epochs=epochs, unfreeze=unfreeze,
                             learning_rate=learning_rate, batch_size=batch_size, val_fraction=val_fraction,
                             patience=patience, seed=seed)
    outcomes, differences = train(settings, ablation=ablation)
    for outcome in outcomes:
        caveat = " (not meaningful: the model did not learn, see the warning above)" if outcome.warnings else ""
        console.info(f"{outcome.variant}: held-out {_summary(outcome.metrics)}{caveat}; model {outcome.model_path}")
        print(outcome.variant)
    if differences is not None:
        print(differences.fillna({"class": ""}).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    console.info(f"next: tk run {data or ''} --backbone {backbone},{outcomes[-1].variant} --weights {weights} "
                 f"--store {store}".replace("  ", " "))


@hookimpl
def register_commands(app: typer.Typer) -> None:
    """Add ``tk train``."""
    app.command(name="train")(train_command)


@hookimpl
def report_sections(context: ReportContext) -> list[ReportSection]:
    """The report's "Fine-tuned backbones" section (``train_report``)."""
    return report_section(context)

