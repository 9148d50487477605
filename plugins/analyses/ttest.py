"""Two-group comparison of every embedding feature: Welch's t, Mann–Whitney U, BH q, Hedges' g.

The grouping is the ``label`` column unless the ``grouping`` setting names another metadata
column. Tests run on images and on per-patient mean embeddings (``level`` column).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toolkit import (Analysis, AnalysisContext, ComparisonColumn, Figure, Finding, Needs, PALETTE, ReportContext,
                     ReportSection, SkipAnalysis, Table, colour_for, hookimpl, lazy_import, new_figure, setting, to_svg)
from toolkit.stats import (FDR_ALPHA, compare_two, duplicate_note, embeddings_f64, level_views, patient_note, top_rows,
                           valid_groups, within_patient)

pd = lazy_import("pandas")

TOP_K = 20


def _two_groups(groups: pd.Series, grouping: str) -> tuple[str, str]:
    present = valid_groups(groups)
    if len(present) != 2 or groups.dropna().nunique() != 2:
        raise SkipAnalysis(f"ttest compares two groups; {grouping!r} has {groups.dropna().nunique()} values "
                           f"({len(present)} with at least 2 images); choose another with --set ttest.grouping=COLUMN, "
                           f"or compare them all with --set anova.factors={grouping}")
    return present[0], present[1]


def _summary(table: pd.DataFrame, level: str, grouping: str) -> Finding:
    rows = table[table["level"] == level]
    n_sig = int((rows["q_val"] < FDR_ALPHA).sum())
    n_sig_mwu = int((rows["q_val_mwu"] < FDR_ALPHA).sum())
    a, b = rows["group_a"].iloc[0], rows["group_b"].iloc[0]
    return Finding(f"{level} level: {n_sig} of {len(rows)} features differ between {a} and {b} at q < {FDR_ALPHA} "
                   f"(Welch t, Benjamini–Hochberg); {n_sig_mwu} by Mann–Whitney U.",
                   detail={"grouping": grouping, "level": level, "n_significant": n_sig,
                           "n_significant_mwu": n_sig_mwu, "n_tested": len(rows)})


def ttest(context: AnalysisContext) -> list:
    """Table ``main`` (every feature, see :func:`compare_two`), table ``top`` (the same columns,
    the ``top_k`` setting's features of largest |hedges_g| per level), one finding per level
    and a bar plot of the top 10 image-level features."""
    grouping = context.settings.grouping
    if grouping not in context.metadata.columns:
        raise SkipAnalysis(f"ttest.grouping {grouping!r} is not a metadata column; set another with "
                           "--set ttest.grouping=COLUMN (a label, subtype or categorical clinical column)")
    if context.clinical_columns.get(grouping) == "numeric":
        raise SkipAnalysis(f"ttest.grouping {grouping!r} is a numeric clinical column; group by a categorical one "
                           "(the clinical analysis correlates numeric ones with every feature)")
    x = embeddings_f64(context)
    group_a, group_b = _two_groups(context.metadata[grouping], grouping)
    tables, findings = [], [patient_note(context.metadata)]
    duplicates = duplicate_note(context.metadata, grouping)
    findings += [duplicates] if duplicates else []
    for view in level_views(context.metadata, x, grouping):
        if view.level == "patient" and within_patient(context.metadata, grouping):
            findings.append(Finding(f"No patient-level Welch test: {grouping} varies within patients, so a patient's "
                                    "means at its two values are paired; see anova's repeated-measures table "
                                    f"(--set anova.factors={grouping}).", "warning"))
            continue
        if min((view.groups == group_a).sum(), (view.groups == group_b).sum()) < 2:
            findings.append(Finding(f"No {view.level}-level test: each group needs at least 2 {view.level}s.",
                                    "warning"))
            continue
        tables.append(compare_two(view, grouping, group_a, group_b))
    table = pd.concat(tables, ignore_index=True)
    findings += [_summary(table, level, grouping) for level in table["level"].unique()]
    top = top_rows(table, "hedges_g", context.settings.top_k, ["level"])
    shown = top[top["level"] == ("patient" if (top["level"] == "patient").any() else "image")]
    return [Table("main", table, f"Welch t and Mann–Whitney U per feature, {group_b} vs {group_a}"),
            Table("top", top, "Features with the largest |Hedges' g| per level"),
            *findings, _bar_figure(context.backbone, shown.head(10)),
            _boxplots(context, x, shown["feature"].head(BOXPLOT_FEATURES).tolist(), grouping)]


LEVEL_WORDS = {"patient": "patient means, one per patient", "image": "images, as if independent"}


def _bar_figure(backbone: str | None, top: pd.DataFrame) -> Figure:
    """Hedges' g with its 95% interval of the top features at one level: patient means when the run
    has patient ids (the image-level interval ignores that a patient's images are alike)."""
    level = top["level"].iloc[0] if len(top) else "image"
    significant = top["q_val"] < FDR_ALPHA
    figure, axes = new_figure(6.0, 3.6)
    positions = np.arange(len(top))
    errors = np.vstack([top["hedges_g"] - top["g_ci_low"], top["g_ci_high"] - top["hedges_g"]])
    axes.bar(positions, top["hedges_g"], yerr=errors, capsize=2,
             color=[PALETTE[1] if s else "#BBBBBB" for s in significant],
             edgecolor="black", linewidth=0.4)
    axes.set_xticks(positions, [f"#{f}{'*' if s else ''}" for f, s in zip(top["feature"], significant)],
                    rotation=45, fontsize=7)
    axes.axhline(0, color="black", linewidth=0.6)
    axes.set_xlabel(f"embedding feature (* = q < {FDR_ALPHA}, Benjamini–Hochberg)")
    a, b = (top["group_a"].iloc[0], top["group_b"].iloc[0]) if len(top) else ("a", "b")
    axes.set_ylabel(f"Hedges' g ({b} − {a}) with 95% CI")
    axes.set_title(f"{backbone}: features with the largest effect ({LEVEL_WORDS[level].split(',')[0]})")
    return Figure("top_features", to_svg(figure),
                  alt=f"Bar chart of the {len(top)} features with the largest Hedges' g between {a} and {b}, "
                      f"tested on {LEVEL_WORDS[level]}; {int(significant.sum())} of them are significant at q < {FDR_ALPHA}.",
                  caption=f"Effect sizes and 95% intervals from {LEVEL_WORDS[level]}. Orange bars (and *) are "
                          "significant after Benjamini–Hochberg correction; grey are not.")


BOXPLOT_FEATURES = 4


def by_class(values: np.ndarray, classes: np.ndarray) -> list[str]:
    """The distinct ``values`` (subtypes) ordered by the class most of their images have, then by
    name: benign subtypes together before malignant ones, not interleaved alphabetically."""
    frame = pd.DataFrame({"value": values, "cls": classes})
    majority = frame.groupby("value")["cls"].agg(lambda c: c.value_counts().index[0])
    return sorted(majority.index, key=lambda v: (majority[v], v))


def _boxplots(context: AnalysisContext, x: np.ndarray, features: list[int], grouping: str) -> Figure:
    """Boxplots of the top features' values by ``grouping`` (top row) and by subtype (bottom row)."""
    meta = context.metadata
    rows = [grouping] + (["subtype"] if grouping != "subtype" and meta["subtype"].notna().any() else [])
    figure, _ = new_figure(2.2 * max(len(features), 1), 2.6 * len(rows))
    figure.clf()
    grid = figure.subplots(len(rows), max(len(features), 1), squeeze=False)
    for r, column in enumerate(rows):
        values = meta[column].astype(object).where(meta[column].notna(), "missing").astype(str).to_numpy()
        groups = by_class(values, meta[grouping].astype(str).to_numpy()) if column != grouping else sorted(set(values))
        for c, feature in enumerate(features):
            axis = grid[r, c]
            parts = axis.boxplot([x[values == g, feature] for g in groups], patch_artist=True, widths=0.6,
                                 showfliers=False)
            for patch, group in zip(parts["boxes"], groups):
                patch.set_facecolor(colour_for(group, groups) if column == grouping else PALETTE[groups.index(group) % len(PALETTE)])
                patch.set_alpha(0.8)
            axis.set_xticks(range(1, len(groups) + 1), [g.replace("_", " ") for g in groups], rotation=45 if len(groups) > 2 else 0,
                            ha="right" if len(groups) > 2 else "center", fontsize=6)
            axis.set_title(f"feature #{feature}", fontsize=8)
            axis.set_ylabel("value (embedding units)" if c == 0 else "", fontsize=7)
    figure.suptitle(f"{context.backbone}: the {len(features)} features with the largest effect, by {' and by '.join(rows)}",
                    fontsize=9)
    figure.set_layout_engine("constrained")  # keeps offset texts (1e-5) and titles of two rows apart
    return Figure("top_feature_boxplots", to_svg(figure),
                  alt=f"Boxplots of the {len(features)} embedding features with the largest Hedges' g, "
                      f"split by {' and by '.join(rows)}; boxes span the middle half of the images, whiskers 1.5 IQR.",
                  caption="Each box shows the middle half of the images' values for one feature and group; the line is the median.")


@dataclass(frozen=True)
class TtestSettings:
    """The settings of ``ttest``."""

    grouping: str = setting("label", "metadata column whose two groups are compared: label, subtype or a "
                                     "categorical clinical column")
    top_k: int = setting(TOP_K, "features of largest |hedges_g| per level in table top")


@hookimpl
def register_analyses(register):
    """Register ``ttest``."""
    register(Analysis(name="ttest", run=ttest, needs=Needs(labels=True, min_samples=4), order=30,
                      settings=TtestSettings,
                      title="Two-group tests per feature",
                      description="Welch's t and Mann–Whitney U per embedding feature, BH-corrected, with "
                                  "Hedges' g, on images and on per-patient means."))


@hookimpl
def report_sections(context: ReportContext) -> list[ReportSection]:
    """The comparison table's count of features that differ between the label groups: at patient level
    (one mean per patient) when the run has patient ids, else at image level, and the header says which."""
    table = context.store.results.run_results(context.run_id, "ttest")
    if table.empty:
        return []
    level = "patient" if (table["level"] == "patient").any() else "image"
    rows = table[table["level"] == level]
    counts = {name: f"{int((group['q_val'] < FDR_ALPHA).sum()):,} of {len(group):,}"
              for name, group in rows.groupby("backbone")}
    header = f"Features that differ (q < 0.05, {'patient means' if level == 'patient' else 'images'})"
    note = ("“Features that differ”: " + ("tested on one mean per patient, so every patient counts once."
                                          if level == "patient" else
                                          "tested on images as if independent (no patient ids), which overstates the evidence."))
    return [ReportSection.comparison_columns(ComparisonColumn(header, counts, order=30, note=note))]
