"""Statistics kernels that analyses share, built-in and third-party alike.

Each works on every embedding feature at once (one row per image or per patient mean, one column
per feature) and is pinned to scipy, statsmodels or scikit-learn by tk's tests::

    from toolkit.stats import bh_qvalues, compare_two, level_views

    for view in level_views(context.metadata, x, "label"):   # images, then patient means
        table = compare_two(view, "label", "benign", "malignant")

What is here:

- multiple testing: :func:`bh_qvalues`, :data:`FDR_ALPHA`;
- grouping and ranks: :func:`group_codes`, :func:`group_sums`, :func:`valid_groups`,
  :func:`column_ranks` (:class:`ColumnRanks`, :class:`RankCache`), :func:`top_rows`;
- images of one patient are not independent: :func:`level_views` (:class:`LevelView`: the image
  rows and one mean per patient and group), :func:`patient_means`, :func:`has_patients`,
  :func:`within_patient`, :func:`patient_blocks` (:class:`Blocks`), :func:`patient_note`,
  :func:`distinct_contents`, :func:`duplicate_note`, :func:`embeddings_f64`;
- two groups: :func:`compare_two` (Welch's t, Mann–Whitney U, Hedges' g, BH), :func:`welch`,
  :func:`mann_whitney`, :func:`hedges_g`, :class:`GroupStats`;
- many groups: :func:`one_way` (one-way ANOVA and Kruskal–Wallis), :func:`f_test`,
  :func:`kruskal_wallis`, :data:`KRUSKAL_MIN_GROUP`; within patients :func:`repeated_measures`
  (repeated-measures ANOVA and Friedman), :func:`friedman_chi2`;
- classifiers evaluated by patient: :func:`fold_indices`, :func:`cross_validate`
  (:class:`OutOfFold`), :func:`standardise`, :func:`metric_rows`, :func:`prediction_rows`,
  :func:`probe_metrics`, :func:`confusion_counts`, :func:`confusion_metrics`, :func:`weighted_auc`,
  the patient bootstrap (:func:`patient_classes`, :func:`patient_resamples`, :func:`percentile_ci`)
  and its constants (:data:`N_BOOTSTRAP`, :data:`C_DEFAULT`, :data:`SOLVER_TOL`);
- Ward clustering without a full distance matrix: :func:`ward_of`, :func:`upper_gram`,
  :func:`distance_strip`, :func:`strips`, :func:`condensed_euclidean`, :func:`ward_linkage`,
  :func:`cut`, :func:`sample_rows`, :data:`WARD_MAX_IMAGES`.

Importing this module imports neither pandas nor scipy; they load on first use.
"""

from __future__ import annotations

from toolkit.analysis.evaluation import (C_DEFAULT, N_BOOTSTRAP, SOLVER_TOL, OutOfFold, confusion_counts,
                                         confusion_metrics, cross_validate, fold_indices, metric_rows, patient_classes,
                                         patient_resamples, percentile_ci, prediction_rows, probe_metrics, standardise,
                                         weighted_auc)
from toolkit.analysis.many_groups import (KRUSKAL_MIN_GROUP, f_test, friedman_chi2, kruskal_wallis, one_way,
                                          repeated_measures)
from toolkit.analysis.stats import (FDR_ALPHA, Blocks, ColumnRanks, LevelView, RankCache, bh_qvalues, column_ranks,
                                    distinct_contents, duplicate_note, embeddings_f64, group_codes, group_sums,
                                    has_patients, level_views, patient_blocks, patient_means, patient_note, top_rows,
                                    valid_groups, within_patient)
from toolkit.analysis.two_groups import GroupStats, compare_two, hedges_g, mann_whitney, welch
from toolkit.analysis.ward import (WARD_MAX_IMAGES, condensed_euclidean, cut, distance_strip, sample_rows, strips,
                                   upper_gram, ward_linkage, ward_of)

__all__ = [
    # multiple testing, grouping, ranks
    "FDR_ALPHA", "bh_qvalues", "group_codes", "group_sums", "valid_groups", "ColumnRanks", "column_ranks",
    "RankCache", "top_rows",
    # the patient-level view
    "LevelView", "level_views", "patient_means", "has_patients", "within_patient", "Blocks", "patient_blocks",
    "patient_note", "distinct_contents", "duplicate_note", "embeddings_f64",
    # two groups
    "GroupStats", "compare_two", "welch", "mann_whitney", "hedges_g",
    # many groups
    "KRUSKAL_MIN_GROUP", "one_way", "f_test", "kruskal_wallis", "repeated_measures", "friedman_chi2",
    # classifiers evaluated by patient
    "C_DEFAULT", "N_BOOTSTRAP", "SOLVER_TOL", "OutOfFold", "fold_indices", "cross_validate", "standardise",
    "metric_rows", "prediction_rows", "probe_metrics", "confusion_counts", "confusion_metrics", "weighted_auc",
    "patient_classes", "patient_resamples", "percentile_ci",
    # Ward clustering
    "WARD_MAX_IMAGES", "ward_of", "upper_gram", "distance_strip", "strips", "condensed_euclidean", "ward_linkage",
    "cut", "sample_rows",
]
