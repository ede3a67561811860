"""What stands out in a scan, without labels: the region it shows and one cue per kind of finding.

Every cue is a module with ``find(scan: CueInput) -> Abnormality``: a map on the working grid, its
threshold of what stands out, and what the votes need. A new cue is one new module and one entry in
:data:`CUES_BY_REGION` (a module's ``find``, or another of its functions of the same form where it
splits its evidence between two ranks). Shared pieces have their own modules: :mod:`.regions` (head, chest or body),
:mod:`.tissues` (fat, soft tissue, bone), :mod:`.morphology` (balls and depths), :mod:`.blobs`
(Hessian blob filters), :mod:`.mirror` (the midsagittal plane) and :mod:`.evidence`.
"""

from __future__ import annotations

from ..names import FALLBACK_CUE
from . import asymmetry, lung_nodule, mass, organ_lesion, tissue_contrast
from .evidence import Abnormality, CueInput, patch_votes, ranked
from .regions import Region, detect_region

#: Cues per region, in rank order (:func:`~.evidence.ranked`): in a body scan a mass that parts the fat
#: planes over centimetres is the finding to show first, a lesion inside an enhanced organ second, a
#: bright blob third; in a chest CT a lung nodule or chest-wall mass first, then a lesion in the organs
#: of the upper abdomen that a chest CT shows, then a bright blob below the chest.
CUES_BY_REGION = {"head": (asymmetry.find,),
                  "chest": (lung_nodule.find, organ_lesion.find, lung_nodule.find_below_thorax),
                  "body": (mass.find, organ_lesion.find, tissue_contrast.find)}
#: Every name a plane's ``cue`` can take.
CUES = ("asymmetry", "focal", "lung_nodule", "tissue_contrast", "mass", "organ_lesion", FALLBACK_CUE)

__all__ = ["Abnormality", "CUES", "CUES_BY_REGION", "CueInput", "FALLBACK_CUE", "Region", "detect_region",
           "find_abnormality", "patch_votes"]


def find_abnormality(scan: CueInput) -> Abnormality:
    """The evidence of the cues of the scan's region, joined by rank."""
    return ranked(find(scan) for find in CUES_BY_REGION[scan.region.name])
