"""The report's "Fine-tuned backbones" section, read from the store: each ``tk train`` variant of a
backbone in the run, its held-out metrics beside the frozen backbone's linear probe, its training
curve and, for an ablation, the paired differences. Nothing here recomputes a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import ReportContext, ReportSection, lazy_import, metric_estimate
from toolkit import TRAINING_DIFFERENCES as DIFFERENCES, TRAINING_HISTORY as HISTORY
from toolkit import TRAINING_METRICS as METRICS, TRAINING_RUNS as RUNS

pd = lazy_import("pandas")

MAX_VARIANTS = 8
METRIC_LABELS = [("balanced_accuracy", "Balanced accuracy"), ("roc_auc", "AUC"), ("accuracy", "Accuracy"),
           ("patient_score", "Patient score"), ("sensitivity", "Sensitivity"), ("specificity", "Specificity")]
SETTINGS_SHOWN = ("augment", "balance", "epochs", "unfreeze", "learning_rate", "seed")


def _per_class(frame: pd.DataFrame, metric: str, cls: str, classes: list[str]) -> dict[str, float] | None:
    """A per-class estimate; binary probes list only the second class, whose specificity is the
    first class's sensitivity (and the other way round)."""
    found = metric_estimate(frame, metric=metric, **{"class": cls})
    if found is None and len(classes) == 2 and cls == classes[0]:
        other = {"sensitivity": "specificity", "specificity": "sensitivity"}[metric]
        found = metric_estimate(frame, metric=other, **{"class": classes[1]})
    return found


def _stored_warnings(value: Any) -> list[str]:
    """The warnings a training run stored (JSON); none for runs stored before tk kept them."""
    return json.loads(value) if isinstance(value, str) else []


def comparison_rows(finetuned: pd.DataFrame, probes: dict[str, pd.DataFrame], classes: list[str]) -> list[dict[str, Any]]:
    """One row per metric (per class for sensitivity and specificity; for two classes only the
    second's, since the first's sensitivity is the second's specificity): the fine-tuned estimate and
    each probe's, keyed by column name."""
    per_class = classes[1:] if len(classes) == 2 else classes
    rows = []
    for metric, label in METRIC_LABELS:
        for cls in (per_class if metric in ("sensitivity", "specificity") else [None]):
            pick = (lambda f: metric_estimate(f, metric=metric, **{"class": None})) if cls is None else (  # noqa: E731
                lambda f: _per_class(f, metric, cls, classes))
            rows.append({"label": f"{label}, {cls}" if cls else label, "finetuned": pick(finetuned),
                         **{name: pick(frame) if not frame.empty else None for name, frame in probes.items()}})
    return rows


def curve_figure(history: pd.DataFrame, variant: str) -> dict[str, Any]:
    """Training and held-out loss per epoch, with the start of fine-tuning marked; a figure record."""
    from matplotlib.ticker import MaxNLocator

    from toolkit import PALETTE, new_figure, to_svg

    figure, axes = new_figure(5.6, 3.4)
    axes.plot(history["epoch"], history["loss"], color=PALETTE[0], marker="o", label="training loss")
    axes.plot(history["epoch"], history["val_loss"], color=PALETTE[1], marker="s", label="held-out loss")
    accuracy = axes.twinx()
    accuracy.plot(history["epoch"], history["val_balanced_accuracy"], color=PALETTE[2], linestyle="--",
                  label="held-out balanced accuracy")
    accuracy.set_ylim(0, 1)
    accuracy.set_ylabel("balanced accuracy")
    finetune = history[history["phase"] == "finetune"]
    if not finetune.empty:
        axes.axvline(finetune["epoch"].iloc[0] - 0.5, color="#888888", linewidth=0.8)
        axes.text(finetune["epoch"].iloc[0] - 0.45, axes.get_ylim()[1], "fine-tuning", va="top", fontsize=8)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("cross-entropy loss")
    lines = axes.get_legend_handles_labels()
    extra = accuracy.get_legend_handles_labels()
    axes.legend(lines[0] + extra[0], lines[1] + extra[1], frameon=False, fontsize=8, ncol=3,
                loc="upper center", bbox_to_anchor=(0.5, -0.2))
    axes.set_title(f"{variant}: training curve")
    alt = (f"Training curve of {variant}: " + "; ".join(
        f"epoch {int(r.epoch)} ({r.phase}) loss {r.loss:.3f}, held-out loss {r.val_loss:.3f}"
        for r in history.itertuples(index=False)))
    return {"mime": "image/svg+xml", "content": to_svg(figure).encode(), "alt": alt}


def training_sections(context: ReportContext) -> dict[str, list[dict[str, Any]]]:
    """``variants``: per trained variant (latest first) that the run used, or that was trained on the
    run's images (same dataset fingerprint) from one of its backbones, its metrics beside the frozen probe (and the probe on the variant's embeddings, when the run has
    them) and its training curve; ``ablations``: the paired differences of their ablations."""
    store, run_id, backbones = context.store, context.run_id, context.backbone_names
    dataset_fingerprint = context.run.get("dataset_fingerprint")
    if not backbones:
        return {"variants": [], "ablations": []}
    bases = {name.split("@")[0] for name in backbones}
    runs = store.tables.rows(RUNS, where={"status": "ok"}, order_by=("started_at",), descending=True)
    same_data = runs["backbone"].isin(bases) & (runs["dataset_fingerprint"] == dataset_fingerprint)
    runs = runs[same_data | runs["variant"].isin(backbones)].head(MAX_VARIANTS)
    probe = store.results.run_results(run_id, "probe")
    if not probe.empty:
        probe = probe[(probe["target"] == "label") & (probe["split"] == "patient")]
    of = lambda name: probe[probe["backbone"] == name] if not probe.empty else probe  # noqa: E731
    variants = []
    for run in runs.to_dict("records"):
        metrics = store.tables.rows(METRICS, where={"train_id": run["train_id"], "split": "patient"})
        history = store.tables.rows(HISTORY, where={"train_id": run["train_id"]}, order_by=("epoch",))
        settings = json.loads(run["settings"]) if isinstance(run["settings"], str) else run["settings"]
        classes = json.loads(run["classes"]) if isinstance(run["classes"], str) else list(run["classes"])
        variants.append({
            **run, "warnings": _stored_warnings(run.get("warnings")), "settings": {k: settings.get(k) for k in SETTINGS_SHOWN}, "in_run": run["variant"] in backbones,
            "rows": comparison_rows(metrics, {"frozen": of(run["backbone"]), "variant": of(run["variant"])}, classes),
            "curve": curve_figure(history, run["variant"]) if not history.empty else None})
    ablation_ids = sorted({v["ablation_id"] for v in variants if v["ablation_id"]})
    ablations = [{"ablation_id": a,
                  "rows": store.tables.rows(DIFFERENCES, where={"ablation_id": a}, order_by=("factor", "metric"))
                  .astype(object).replace({np.nan: None}).to_dict("records")} for a in ablation_ids]
    return {"variants": variants, "ablations": ablations}


TEMPLATE = Path(__file__).parent / "templates" / "training.html"


def report_section(context: ReportContext) -> list[ReportSection]:
    """"Fine-tuned backbones", when a variant of one of the run's backbones was trained."""
    training = training_sections(context)
    if not training["variants"]:
        return []
    return [ReportSection("Fine-tuned backbones", slot="models", order=10, anchor="training", template=TEMPLATE,
                          data={"training": training}, reads=("probe",))]

