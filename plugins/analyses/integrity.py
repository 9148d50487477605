"""Dataset integrity: identical files with conflicting metadata, near-duplicate images across
patients, and class / patient balance per magnification. Everything here is a finding, not a failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolkit import (Analysis, AnalysisContext, Finding, Needs, ReportContext, ReportSection, Table, hookimpl,
                     lazy_import)

pd = lazy_import("pandas")

NEAR_DUPLICATE_COSINE = 0.999
BLOCK_ROWS = 2048
METADATA = ("label", "subtype", "patient_id")


def conflicting_files(metadata: pd.DataFrame) -> pd.DataFrame:
    """Identical files (same sha256) whose label, subtype or patient differ: one row per file with
    sha256, image_id, relpath, label, subtype, patient_id, conflict (e.g. 'subtype, patient_id')."""
    present = [c for c in METADATA if c in metadata.columns]
    groups = metadata.groupby("sha256")[present].nunique(dropna=False)
    conflicts = groups[(groups > 1).any(axis=1)]
    reason = conflicts.apply(lambda row: ", ".join(c for c in present if row[c] > 1), axis=1).rename("conflict")
    rows = metadata[metadata["sha256"].isin(conflicts.index)]
    columns = ["sha256", "image_id", "relpath", *present]
    return rows[columns].join(reason, on="sha256").sort_values(["sha256", "image_id"]).reset_index(drop=True)


def patients_known(metadata: pd.DataFrame) -> bool:
    """Whether every image has a patient id (class folders have none unless ``--patient-from``)."""
    return bool(metadata["patient_id"].notna().all())


def near_duplicates(x: np.ndarray, metadata: pd.DataFrame, threshold: float = NEAR_DUPLICATE_COSINE) -> pd.DataFrame:
    """Pairs of different files, not known to be of one patient (their patients differ, or one is
    unknown), with centred cosine ≥ ``threshold``: image_id_a, image_id_b, centred_cosine, label_a,
    label_b, same_label.

    Centred: the run's mean embedding is subtracted first (as the precision parity does). Plain
    cosine is near 1 for any two images whose embeddings share a large mean (random weights, pooled
    ReLU features) and flagged thousands of pairs that are not alike."""
    centred = np.asarray(x, dtype=np.float64) - np.asarray(x, dtype=np.float64).mean(axis=0)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    unit = (centred / np.where(norms == 0, 1, norms)).astype(np.float32)
    known = metadata["patient_id"].notna().to_numpy()
    patients = metadata["patient_id"].astype(str).to_numpy()
    shas = metadata["sha256"].to_numpy()
    firsts, seconds, values = [], [], []
    for start in range(0, len(unit), BLOCK_ROWS):
        block = unit[start:start + BLOCK_ROWS] @ unit[start:].T
        rows, cols = np.nonzero(block >= threshold)
        rows, cols = rows + start, cols + start
        same_patient = known[rows] & known[cols] & (patients[rows] == patients[cols])
        keep = (cols > rows) & ~same_patient & (shas[rows] != shas[cols])
        firsts.append(rows[keep])
        seconds.append(cols[keep])
        values.append(block[rows[keep] - start, cols[keep] - start])
    a, b = np.concatenate(firsts), np.concatenate(seconds)
    labels = metadata["label"].to_numpy()
    ids = metadata["image_id"].to_numpy()
    return pd.DataFrame({"image_id_a": ids[a], "image_id_b": ids[b], "centred_cosine": np.concatenate(values).astype(float),
                         "label_a": labels[a], "label_b": labels[b], "same_label": labels[a] == labels[b]})


def balance(metadata: pd.DataFrame) -> pd.DataFrame:
    """Images and patients per magnification (empty when unknown) and label: magnification, label,
    n_images, n_patients (only when every image has a patient id), share_of_images (within the
    magnification)."""
    frame = metadata.assign(magnification=metadata["magnification"].astype("Int64"),
                            label=metadata["label"].fillna("unlabelled"))
    counts = {"n_images": ("image_id", "size")}
    if patients_known(metadata):
        counts["n_patients"] = ("patient_id", "nunique")
    table = frame.groupby(["magnification", "label"], dropna=False).agg(**counts).reset_index()
    per_magnification = table.groupby("magnification", dropna=False)["n_images"].transform("sum")
    table["share_of_images"] = table["n_images"] / per_magnification
    return table


def _findings(conflicts: pd.DataFrame, pairs: pd.DataFrame, counts: pd.DataFrame, patients: bool) -> list[Finding]:
    """The integrity findings; they speak of patients only when ``patients`` (every image has an id)."""
    findings = []
    if len(conflicts):
        kinds = sorted({k for value in conflicts["conflict"] for k in value.split(", ")})
        findings.append(Finding(
            f"{conflicts['sha256'].nunique()} identical files appear {len(conflicts)} times with conflicting "
            f"{' and '.join(kinds)} (see results_integrity_conflicts); count each once or drop them.", "warning",
            detail={"files": int(conflicts["sha256"].nunique()), "rows": len(conflicts), "conflicts": kinds}))
    if len(pairs):
        what, leak = (("images of different patients", "possible duplicates across patients, which leak between "
                       "patient-level folds") if patients else
                      ("different images", "possible duplicates, which leak between cross-validation folds"))
        findings.append(Finding(
            f"{len(pairs)} pairs of {what} have embeddings with centred cosine ≥ {NEAR_DUPLICATE_COSINE} "
            f"({int((~pairs['same_label']).sum())} of them with different labels): {leak}.", "warning",
            detail={"pairs": len(pairs), "threshold": NEAR_DUPLICATE_COSINE, "measure": "centred cosine"}))
    share = counts.groupby("label")["share_of_images"].agg(["min", "max"])
    findings.append(Finding(
        "Class balance per magnification: " + "; ".join(f"{label} {row['min']:.0%}–{row['max']:.0%} of images"
                                                         for label, row in share.iterrows()) + ".",
        detail={"balance": counts.to_dict("records")}))
    return findings


def integrity(context: AnalysisContext) -> list:
    """Tables ``conflicts`` (see :func:`conflicting_files`) and ``near_duplicates`` (see
    :func:`near_duplicates`), each only when not empty, and ``balance`` (see :func:`balance`), with findings."""
    meta = context.metadata.reset_index(drop=True)
    conflicts = conflicting_files(meta)
    pairs = near_duplicates(np.asarray(context.embeddings), meta)
    counts = balance(meta)
    patients = patients_known(meta)
    pairs_of = "different patients" if patients else "different images"
    tables = [Table("conflicts", conflicts, "Identical files with conflicting labels, subtypes or patients"),
              Table("near_duplicates", pairs, f"Image pairs of {pairs_of} with centred cosine ≥ {NEAR_DUPLICATE_COSINE}")]
    counted = "Images and patients" if patients else "Images"
    return [*[t for t in tables if len(t.data)], Table("balance", counts, f"{counted} per magnification and label"),
            *_findings(conflicts, pairs, counts, patients)]


@hookimpl
def register_analyses(register):
    """Register ``integrity``."""
    register(Analysis(name="integrity", run=integrity, needs=Needs(min_samples=1), title="Dataset integrity",
                      description="Duplicate files with conflicting metadata, near-duplicates across patients, "
                                  "class and patient balance per magnification."))


INTEGRITY_TEMPLATE = Path(__file__).parent / "templates" / "integrity.html"


@hookimpl
def report_sections(context: ReportContext) -> list[ReportSection]:
    """The integrity findings in the Dataset section: once each, and naming the backbones a finding
    holds for when it does not hold for all (near-duplicates depend on the embeddings)."""
    found = context.store.results.run_findings(context.run_id, "integrity")
    if not found:
        return []
    backbones: dict[tuple[str, str], set[str]] = {}
    for f in found:
        backbones.setdefault((f["severity"], f["message"]), set()).add(f["backbone"])
    every = {f["backbone"] for f in found}
    ordered = sorted(backbones, key=lambda f: (f[0] != "warning", f[1]))  # warnings first, as severity DESC
    return [ReportSection("Integrity checks", slot="dataset", template=INTEGRITY_TEMPLATE, data={"findings": [
        {"severity": severity, "message": message if backbones[(severity, message)] == every
         else f"{', '.join(sorted(backbones[(severity, message)]))}: {message}"} for severity, message in ordered]})]
