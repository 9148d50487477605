"""Helpers shared by the statistics analyses: FDR correction, group sums, column ranks, the patient-level view.

Nothing here registers an analysis; ``ttest``, ``anova``, ``probe`` and friends import it.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from toolkit.plugin.types import AnalysisContext
from toolkit.plugin.results import Finding, SkipAnalysis
from toolkit.lazy import lazy_import

pd = lazy_import("pandas")

FDR_ALPHA = 0.05
PATIENT_NOTE = ("Images of one patient are not independent: image-level p-values treat every image as a "
                "separate observation and overstate the evidence. The patient-level rows (level = 'patient') "
                "test per-patient mean embeddings, one row per patient and group.")


def bh_qvalues(p_values: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q) via statsmodels ``fdr_bh``; NaN p-values stay NaN
    and do not count among the tests."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        q[finite] = multipletests(p[finite], alpha=FDR_ALPHA, method="fdr_bh")[1]
    return q


def embeddings_f64(context: AnalysisContext) -> np.ndarray:
    """The context's embeddings as float64; SkipAnalysis when every feature is constant."""
    x = np.asarray(context.embeddings, dtype=np.float64)
    if x.shape[1] == 0 or not np.any(np.ptp(x, axis=0) > 0):
        raise SkipAnalysis("every feature is constant; nothing to test")
    return x


def group_codes(values: pd.Series) -> tuple[np.ndarray, list]:
    """Integer codes (``-1`` for missing) and the sorted distinct values of ``values``."""
    codes, uniques = pd.factorize(values, sort=True)
    return codes, list(uniques)


def group_sums(x: np.ndarray, codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-group row sums ``(n_groups, dim)`` and row counts, one sparse product; code -1 is left out."""
    from scipy import sparse

    keep = codes >= 0
    indicator = sparse.csr_matrix((np.ones(int(keep.sum())), (codes[keep], np.flatnonzero(keep))),
                                  shape=(n_groups, len(codes)))
    return np.asarray(indicator @ x), np.bincount(codes[keep], minlength=n_groups)


@dataclass(frozen=True)
class ColumnRanks:
    """Average ranks within every column of a matrix whose rows are observations, as
    ``scipy.stats.rankdata(x, axis=0)`` gives them (tied values share the mean of their ranks), and
    each column's tie term: the sum of t³ - t over its runs of t equal values."""

    ranks: np.ndarray  # (columns, rows): row j holds the ranks of column j
    tie_term: np.ndarray  # (columns,)

    def group_sums(self, codes: np.ndarray, n_groups: int) -> np.ndarray:
        """Rank sums per group and column, ``(n_groups, columns)``; code -1 is left out. One matrix
        product, exact: every partial sum is a multiple of 1/2 far below 2**53."""
        return (self.ranks @ (codes[:, None] == np.arange(n_groups)).astype(np.float64)).T


def column_ranks(x: np.ndarray) -> ColumnRanks:
    """Rank every column of ``x`` with one sort per column (the rank tests share one ranking this way)."""
    rows = np.ascontiguousarray(x.T)  # sorting contiguous rows is much faster than strided columns
    order = np.argsort(rows, axis=1)
    ordered = np.take_along_axis(rows, order, axis=1)
    del rows
    ranks = np.empty(ordered.shape)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(1.0, ordered.shape[1] + 1), ordered.shape), axis=1)
    return ColumnRanks(ranks, _average_ties(ranks, order, ordered))


def _average_ties(ranks: np.ndarray, order: np.ndarray, ordered: np.ndarray) -> np.ndarray:
    """Give each run of equal values in the row-wise sorted ``ordered`` the mean of its ranks in
    ``ranks`` (which hold each value's position in the sort, plus 1); return each row's tie term.
    Ties are few in continuous data, so this touches only their positions."""
    dim, n = ordered.shape
    repeats = np.flatnonzero(ordered[:, 1:] == ordered[:, :-1])  # (row, position - 1) of values equal to the previous one
    if not repeats.size:
        return np.zeros(dim)
    row, position = np.divmod(repeats, n - 1)
    position += 1
    flat = row * n + position  # never a row's first position, so two rows' runs never merge
    new_run = np.ones(len(flat), dtype=bool)
    new_run[1:] = flat[1:] != flat[:-1] + 1
    run = np.cumsum(new_run) - 1
    lengths = np.bincount(run) + 1
    first = position[new_run] - 1  # 0-based sorted position where each run starts
    mean_rank = first + (lengths + 1) / 2
    members = np.repeat(flat[new_run] - 1, lengths) + _offsets(lengths)
    np.put(ranks, np.repeat(row[new_run], lengths) * n + order.ravel()[members], np.repeat(mean_rank, lengths))
    return np.bincount(row[new_run], weights=lengths.astype(np.float64) ** 3 - lengths, minlength=dim)


def _offsets(lengths: np.ndarray) -> np.ndarray:
    """0, 1, ..., length - 1 for each of ``lengths``, concatenated."""
    return np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)


class RankCache:
    """Column ranks by the matrix and rows they came from, so that tests of the same rows (anova's
    factors at image level) sort them once. It holds on to its matrices, so an identity match is
    never a recycled id."""

    def __init__(self) -> None:
        self._entries: list[tuple[np.ndarray, np.ndarray, ColumnRanks]] = []

    def ranks(self, x: np.ndarray, rows: np.ndarray) -> ColumnRanks:
        """:func:`column_ranks` of ``x[rows]`` (``rows`` a boolean mask)."""
        for matrix, mask, ranks in self._entries:
            if matrix is x and np.array_equal(mask, rows):
                return ranks
        ranks = column_ranks(x if rows.all() else x[rows])
        self._entries.append((x, rows.copy(), ranks))
        return ranks


@dataclass(frozen=True)
class LevelView:
    """Rows to test at one level: the image rows, or one mean embedding per patient and group
    (``subjects`` then names each row's patient)."""

    level: str  # "image" or "patient"
    x: np.ndarray
    groups: pd.Series
    subjects: pd.Series | None = None


def patient_means(x: np.ndarray, metadata: pd.DataFrame, column: str) -> LevelView:
    """Mean embedding of every (patient, ``column`` value) pair that has images."""
    keys = metadata[["patient_id", column]].astype(object)
    present = keys.notna().all(axis=1).to_numpy()
    pairs = pd.MultiIndex.from_frame(keys[present])
    codes = np.full(len(keys), -1)
    codes[present], uniques = pd.factorize(pairs)
    sums, counts = group_sums(x, codes, len(uniques))
    return LevelView("patient", sums / counts[:, None], pd.Series(uniques.get_level_values(1), name=column),
                     pd.Series(uniques.get_level_values(0), name="patient_id"))


def within_patient(metadata: pd.DataFrame, column: str) -> bool:
    """Whether ``column`` varies within patients: most patients have images at two or more of its
    values (magnification in BreakHis), so patient-level tests of it need a repeated-measures design."""
    keys = metadata[["patient_id", column]].dropna()
    if keys.empty:
        return False
    return bool((keys.groupby("patient_id")[column].nunique() >= 2).mean() > 0.5)


@dataclass(frozen=True)
class Blocks:
    """Complete repeated-measures blocks: ``y[s, k]`` is patient s's mean embedding at level k, for
    the patients that have images at every level."""

    y: np.ndarray  # (subjects, levels, features)
    levels: list
    n_dropped: int  # patients left out for lacking a level


def patient_blocks(view: LevelView) -> Blocks:
    """The patients of a patient-level view with a mean at every level, as a (subjects, levels,
    features) array; levels in sorted order."""
    levels = sorted(view.groups.unique())
    level_codes = view.groups.map({level: i for i, level in enumerate(levels)}).to_numpy()
    per_subject = pd.Series(level_codes).groupby(view.subjects.to_numpy()).nunique()
    complete = per_subject.index[per_subject == len(levels)]
    keep = view.subjects.isin(complete).to_numpy()
    subject_codes = pd.factorize(view.subjects[keep], sort=True)[0]
    order = np.lexsort((level_codes[keep], subject_codes))
    y = view.x[keep][order].reshape(len(complete), len(levels), view.x.shape[1])
    return Blocks(y, levels, int(len(per_subject) - len(complete)))


def has_patients(metadata: pd.DataFrame) -> bool:
    """Whether every image has a patient_id and there are at least 2 patients."""
    patients = metadata["patient_id"]
    return bool(patients.notna().all() and patients.nunique() >= 2)


def patient_note(metadata: pd.DataFrame) -> Finding:
    """Why the patient-level rows exist, or a warning that they are missing."""
    if has_patients(metadata):
        return Finding(PATIENT_NOTE, detail={"n_patients": int(metadata["patient_id"].nunique())})
    return Finding("No patient-level view: it needs a patient_id for every image and at least 2 patients. "
                   "Image-level p-values assume independent images.", "warning")


def _content_rows(metadata: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    """Which rows repeat an earlier row's content and ``column`` value, and which belong to a content
    filed under two or more values of ``column``."""
    values = metadata[column].astype(object).where(metadata[column].notna(), None)
    repeats = pd.DataFrame({"sha256": metadata["sha256"], "value": values}).duplicated().to_numpy()
    conflicting = (values.groupby(metadata["sha256"]).transform("nunique") > 1).to_numpy()
    return repeats, conflicting


def distinct_contents(metadata: pd.DataFrame, column: str) -> np.ndarray:
    """Rows to test ``column`` on: each image content (sha256) once per value, and no content that
    appears under two values (BreakHis files patient 14-13412's images under two subtypes)."""
    repeats, conflicting = _content_rows(metadata, column)
    return ~repeats & ~conflicting


def duplicate_note(metadata: pd.DataFrame, column: str) -> Finding | None:
    """What :func:`distinct_contents` left out of the tests of ``column``, or None when nothing."""
    repeats, conflicting_rows = _content_rows(metadata, column)
    repeated = int((repeats & ~conflicting_rows).sum())
    conflicting = int(metadata["sha256"][conflicting_rows].nunique())
    if not repeated and not conflicting:
        return None
    parts = ([f"{repeated} image{'s' if repeated != 1 else ''} with the same content as another of the same "
              f"{column} counted once"] if repeated else [])
    parts += ([f"{conflicting} content{'s' if conflicting != 1 else ''} filed under two or more {column} values "
               "left out (see the integrity checks)"] if conflicting else [])
    return Finding(f"Tests of {column}: " + "; ".join(parts) + ".", "warning",
                   {"column": column, "n_repeated": repeated, "n_conflicting_contents": conflicting})


def level_views(metadata: pd.DataFrame, x: np.ndarray, column: str) -> list[LevelView]:
    """The image-level view of ``column`` and, when :func:`has_patients`, the patient-level view, on
    :func:`distinct_contents` (an image counted once, whatever the number of its files)."""
    keep = distinct_contents(metadata, column)
    if not keep.all():
        metadata, x = metadata[keep].reset_index(drop=True), x[keep]
    views = [LevelView("image", x, metadata[column].reset_index(drop=True))]
    return views + [patient_means(x, metadata, column)] if has_patients(metadata) else views


def valid_groups(groups: pd.Series, min_size: int = 2) -> list:
    """Sorted group values that have at least ``min_size`` rows."""
    sizes = groups.dropna().value_counts()
    return sorted(sizes.index[sizes >= min_size])


def top_rows(frame: pd.DataFrame, by: str, k: int, within: list[str]) -> pd.DataFrame:
    """The ``k`` rows of largest ``|by|`` within each combination of the ``within`` columns."""
    ranked = frame.assign(_abs=frame[by].abs()).sort_values("_abs", ascending=False, kind="stable")
    return ranked.groupby(within, sort=False).head(k).drop(columns="_abs").reset_index(drop=True)

