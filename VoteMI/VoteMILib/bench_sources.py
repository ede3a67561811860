"""Where each bench case comes from: its collection and acquisition (``source``), so that the bench can
report every table per source as well as per region (docs/benchmark.md).

The table is kept here, in the repository, from the data READMEs (``../shared/data/README.md``): the data
folder is read-only and is never asked. A folder of one's own can name its sources in an optional ``source``
column of its ``cases.tsv``; a case named in neither is ``unlisted``.
"""

from __future__ import annotations

#: Case -> source (collection and acquisition) for the shared cases that are not sarcoma scans.
SHARED_SOURCES = {
    "pyradiomics_brain1": "pyradiomics-brain-t1c",
    "pyradiomics_brain2": "pyradiomics-brain-t1c",
    "tcga_du_7294": "tcga-glioma-t1c",
    "tcga_fg_6692": "tcga-glioma-t1c",
    "aurora_met": "aurora-metastases-t1c",
    "brats_gli_00001": "brats-t1c",
    "pyrad_lung2": "pyradiomics-lung-ct",
    "mirp_nsclc_lung1-001": "nsclc-radiomics-ct",
    "mirp_sts002_ct": "ibsi-sarcoma-ct",
    "pyrad_breast1_mr": "pyradiomics-breast-mr",
    "crlm_1004": "crlm-portal-ct",
    "crlm_1006": "crlm-portal-ct",
    "prostatex_0001_t2": "prostatex-t2",
    "prostatex_0218_t2": "prostatex-t2",
    "colin27": "colin27-t1",
}
#: The IBSI sarcoma scans (``stsNNN_ct``, ``stsNNN_mr_t1``): the suffix names the acquisition.
SARCOMA_SOURCES = {"ct": "ibsi-sarcoma-ct", "mr_t1": "ibsi-sarcoma-mr-t1"}
UNLISTED = "unlisted"


def source_of(case: str, declared: str | None = None) -> str:
    """The source of a case: ``declared`` (a ``cases.tsv`` column) when given, else the repository's table.

    Parameters
    ----------
    case : str
        The case name (its folder in the bench folder).
    declared : str or None
        The ``source`` cell of the case's ``cases.tsv`` row, if the folder has that column.

    Returns
    -------
    str
        e.g. ``ibsi-sarcoma-ct``; ``unlisted`` for a case named nowhere.
    """
    if declared and declared.strip():
        return declared.strip()
    if case in SHARED_SOURCES:
        return SHARED_SOURCES[case]
    patient, _, acquisition = case.partition("_")
    if patient.startswith("sts") and patient[3:].isdigit() and acquisition in SARCOMA_SOURCES:
        return SARCOMA_SOURCES[acquisition]
    return UNLISTED
