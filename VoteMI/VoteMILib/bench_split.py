"""The design/check split of the bench cases, by patient (docs/benchmark.md).

Cues are tuned on the *design* half only; the *check* half is the headline. The split was drawn once
by :func:`draw_split` with :data:`SEED`, and is stored in :data:`SPLIT` so that it never changes with
the code that draws it (Testing/test_engine_bench.py checks that the stored table is what the rule gives).
The asymmetry, region, ``lung_nodule`` and ``tissue_contrast`` cues were built while looking at every
case of ../shared/data, before the split was drawn: those patients (:data:`DEVELOPMENT_PATIENTS`) are
design whatever the draw gave them (issue 30), so the check half holds only scans no cue was built on.

Rule: the patients of each region (head, chest, extremity, breast; the region is what was scanned,
from the data READMEs, never what the selection detects) are sorted by id and permuted by
``numpy.random.default_rng(SEED)``, one generator drawn from in that order of regions; the first
``n // 2`` patients of a region's permutation are *design*, the rest *check* (the check half gets
the odd one); then every development patient is moved to *design*. Every scan of a patient (CT and
MR T1 of a sarcoma patient, and mirp_sts002_ct, the same scan as sarcoma/sts002_ct) goes to its
patient's half.
"""

from __future__ import annotations

HALVES = ("design", "check")
#: Regions, in the order the generator is drawn from.
REGIONS = ("head", "chest", "extremity", "breast")
#: Chosen before the split was drawn (the number of the issue that asked for it).
SEED = 14

#: Patients of ../shared/data with a lesion mask and the region scanned (../shared/data/README.md);
#: each is one patient. The sarcoma patients (``stsNNN``) are all extremity.
SHARED_PATIENTS = {
    "pyradiomics_brain1": "head", "pyradiomics_brain2": "head", "tcga_du_7294": "head",
    "tcga_fg_6692": "head", "aurora_met": "head",
    "pyrad_lung2": "chest", "mirp_nsclc_lung1-001": "chest",
    "pyrad_breast1_mr": "breast",
}
#: Patients looked at while cues were built, before the split was drawn (docs/benchmark.md, "what was seen
#: when"): design, whatever the draw gave them. sts002 is mirp_sts002_ct, a development case of ../shared/data.
DEVELOPMENT_PATIENTS = frozenset({"pyradiomics_brain1", "pyradiomics_brain2", "tcga_du_7294", "pyrad_lung2",
                                  "pyrad_breast1_mr", "sts002"})
#: Scans of ../shared/data that belong to a sarcoma patient.
SAME_PATIENT = {"mirp_sts002_ct": "sts002"}
#: The same scan in two folders: scored once when both are benched together.
SAME_SCAN = {"mirp_sts002_ct": "sts002_ct"}

#: case -> (patient, region, half), as drawn by ``draw_split(all cases with masks)``, development patients
#: in design.
SPLIT = {
    'aurora_met': ('aurora_met', 'head', 'design'),
    'mirp_nsclc_lung1-001': ('mirp_nsclc_lung1-001', 'chest', 'design'),
    'mirp_sts002_ct': ('sts002', 'extremity', 'design'),
    'pyrad_breast1_mr': ('pyrad_breast1_mr', 'breast', 'design'),
    'pyrad_lung2': ('pyrad_lung2', 'chest', 'design'),
    'pyradiomics_brain1': ('pyradiomics_brain1', 'head', 'design'),
    'pyradiomics_brain2': ('pyradiomics_brain2', 'head', 'design'),
    'sts001_ct': ('sts001', 'extremity', 'check'),
    'sts001_mr_t1': ('sts001', 'extremity', 'check'),
    'sts002_ct': ('sts002', 'extremity', 'design'),
    'sts002_mr_t1': ('sts002', 'extremity', 'design'),
    'sts005_ct': ('sts005', 'extremity', 'design'),
    'sts005_mr_t1': ('sts005', 'extremity', 'design'),
    'sts007_mr_t1': ('sts007', 'extremity', 'check'),
    'sts011_mr_t1': ('sts011', 'extremity', 'design'),
    'sts013_mr_t1': ('sts013', 'extremity', 'design'),
    'sts015_ct': ('sts015', 'extremity', 'check'),
    'sts015_mr_t1': ('sts015', 'extremity', 'check'),
    'sts017_mr_t1': ('sts017', 'extremity', 'design'),
    'sts021_mr_t1': ('sts021', 'extremity', 'design'),
    'sts023_ct': ('sts023', 'extremity', 'check'),
    'sts023_mr_t1': ('sts023', 'extremity', 'check'),
    'sts027_mr_t1': ('sts027', 'extremity', 'check'),
    'sts029_ct': ('sts029', 'extremity', 'check'),
    'sts029_mr_t1': ('sts029', 'extremity', 'check'),
    'sts031_ct': ('sts031', 'extremity', 'design'),
    'sts031_mr_t1': ('sts031', 'extremity', 'design'),
    'sts033_ct': ('sts033', 'extremity', 'check'),
    'sts033_mr_t1': ('sts033', 'extremity', 'check'),
    'sts035_ct': ('sts035', 'extremity', 'design'),
    'sts035_mr_t1': ('sts035', 'extremity', 'design'),
    'sts037_mr_t1': ('sts037', 'extremity', 'design'),
    'sts039_mr_t1': ('sts039', 'extremity', 'check'),
    'sts041_ct': ('sts041', 'extremity', 'design'),
    'sts041_mr_t1': ('sts041', 'extremity', 'design'),
    'sts043_ct': ('sts043', 'extremity', 'design'),
    'sts043_mr_t1': ('sts043', 'extremity', 'design'),
    'sts045_mr_t1': ('sts045', 'extremity', 'check'),
    'sts047_ct': ('sts047', 'extremity', 'design'),
    'sts047_mr_t1': ('sts047', 'extremity', 'design'),
    'sts049_mr_t1': ('sts049', 'extremity', 'check'),
    'sts051_ct': ('sts051', 'extremity', 'check'),
    'sts051_mr_t1': ('sts051', 'extremity', 'check'),
    'tcga_du_7294': ('tcga_du_7294', 'head', 'design'),
    'tcga_fg_6692': ('tcga_fg_6692', 'head', 'design'),
}


def patient_of(case: str) -> str:
    """The patient a case belongs to: ``stsNNN`` for every scan of sarcoma patient NNN, else the case."""
    if case in SAME_PATIENT:
        return SAME_PATIENT[case]
    if case.startswith("sts") and "_" in case:
        return case.split("_", 1)[0]
    return case


def region_of_patient(patient: str) -> str:
    if patient in SHARED_PATIENTS:
        return SHARED_PATIENTS[patient]
    if patient.startswith("sts"):
        return "extremity"
    raise KeyError(f"no region known for patient {patient}")


def draw_split(cases, seed: int = SEED) -> dict:
    """The split of ``cases`` by the rule of this module: case -> (patient, region, half)."""
    import numpy as np

    patients = {}
    for case in cases:
        patients.setdefault(patient_of(case), []).append(case)
    rng = np.random.default_rng(seed)
    split = {}
    for region in REGIONS:
        mine = sorted(p for p in patients if region_of_patient(p) == region)
        order = rng.permutation(len(mine))
        for rank, position in enumerate(order):
            half = HALVES[0] if rank < len(mine) // 2 else HALVES[1]
            patient = mine[position]
            half = HALVES[0] if patient in DEVELOPMENT_PATIENTS else half
            for case in patients[patient]:
                split[case] = (patient, region, half)
    return dict(sorted(split.items()))


def half_of(case: str) -> str:
    """"design", "check", or "unsplit" for a case the split does not hold."""
    return SPLIT[case][2] if case in SPLIT else "unsplit"


def region_of(case: str) -> str | None:
    """The scanned region of a case in the split, or None."""
    return SPLIT[case][1] if case in SPLIT else None
