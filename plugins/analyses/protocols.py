"""Evaluation protocols of the linear probe: tk's own patient-grouped cross-validation, and published
ones whose numbers a user can put beside a leaderboard's."""

from __future__ import annotations

from dataclasses import dataclass

PATIENT_CV = "patient-cv"


@dataclass(frozen=True)
class Protocol:
    """A published linear-probe protocol: which images, which classes, how many repeated patient splits."""

    name: str
    description: str
    magnification: int
    subtypes: tuple[str, ...]
    repeats: int


PROTOCOLS = {p.name: p for p in (
    Protocol("breakhis-40x-4class", "BreakHis, 40x images only, 4 classes (tubular adenoma, mucinous carcinoma, "
             "fibroadenoma, ductal carcinoma), split by patient, balanced accuracy averaged over repeated splits",
             40, ("tubular_adenoma", "mucinous_carcinoma", "fibroadenoma", "ductal_carcinoma"), 5),
)}
