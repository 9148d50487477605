"""``tk train [DATA] --backbone NAME``: fine-tune a backbone on held-out patients (toolkit.models.training).

Prints the trained variant's name (``<backbone>@<train_id>``) on stdout, one per line (four with
``--ablation``, then the table of paired differences); progress and metrics go to stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

from toolkit import hookimpl
from toolkit.plugins.commands.train_report import report_section

if TYPE_CHECKING:
    import typer

    from toolkit.plugin.sections import ReportContext, ReportSection
    from toolkit.plugin.types import CliContext


def _summary(metrics) -> str:  # noqa: ANN001 (a pandas DataFrame; pandas is imported lazily)
    """One line: held-out balanced accuracy and AUC with their CIs."""
    parts = []
    for metric in ("balanced_accuracy", "roc_auc"):
        row = metrics[metrics["metric"] == metric].iloc[0]
        parts.append(f"{metric} {row.value:.3f} (95% CI {row.ci_low:.3f}–{row.ci_high:.3f})")
    return ", ".join(parts)


@hookimpl
def register_commands(app: typer.Typer, cli: CliContext) -> None:
    """Add ``tk train``."""
    import typer

    from toolkit.cli.app import PluginOption

    @app.command(name="train")
    def train_command(
        data: Optional[Path] = typer.Argument(None, help="Dataset folder, BreakHis tree or CSV manifest "
                                                         "(default: the bundled demo)."),
        backbone: str = typer.Option(..., "--backbone", help="Backbone to fine-tune (see `tk plugins`)."),
        weights: str = typer.Option("auto", "--weights", help="Starting weights: auto|imagenet|random|PATH."),
        augment: bool = typer.Option(False, "--augment/--no-augment",
                                     help="Flip, rotation, zoom, translation and H&E stain jitter while training."),
        balance: str = typer.Option("weights", "--balance", help="weights | oversample | none."),
        epochs: int = typer.Option(5, "--epochs", help="Most epochs per phase (early stopping may end sooner)."),
        unfreeze: int = typer.Option(10, "--unfreeze", help="Weight layers at the top of the backbone to fine-tune "
                                                            "after the head (0: train the head only)."),
        learning_rate: float = typer.Option(1e-3, "--learning-rate", help="Head phase; fine-tuning uses a tenth."),
        batch_size: int = typer.Option(16, "--batch-size"),
        val_fraction: float = typer.Option(0.25, "--val-fraction", help="Share of patients held out."),
        patience: int = typer.Option(2, "--patience", help="Epochs without a better held-out loss before stopping."),
        seed: int = typer.Option(0, "--seed"),
        ablation: bool = typer.Option(False, "--ablation", help="Train with and without augmentation and class "
                                                                "weights (4 runs) and compare them."),
        store: Path = typer.Option(Path("tk.duckdb"), "--store", help="DuckDB store; models go to tk_models/ beside it."),
        source: str = typer.Option("auto", "--source", help="auto | breakhis | folders | manifest"),
        plugin: Optional[List[str]] = PluginOption,
    ) -> None:
        """Fine-tune a backbone with a softmax head; the result becomes the backbone <NAME>@<train id>."""
        from toolkit import console
        from toolkit.models.training import TrainSettings, train

        settings = TrainSettings(data=data, backbone=backbone, weights=weights, store=store, plugins=cli.plugins,
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
def report_sections(context: ReportContext) -> list[ReportSection]:
    """The report's "Fine-tuned backbones" section (``train_report``)."""
    return report_section(context)

