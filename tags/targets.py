"""Catalogue of the structures TAGS knows, with their sentences and real SNOMED CT codes.

Sentences follow the template used by the CLIP-driven Universal Model and SegVol
("a computerized tomography of a {structure}").
"""

from __future__ import annotations

from typing import Dict

from .config import Code, TargetSpec

ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
ABNORMAL_STRUCTURE = Code("49755003", "SCT", "Morphologically Abnormal Structure")
NEOPLASM = Code("108369006", "SCT", "Neoplasm")

ORGAN_CODES: Dict[str, Code] = {
    "liver": Code("10200004", "SCT", "Liver"),
    "kidney": Code("64033007", "SCT", "Kidney"),
    "pancreas": Code("15776009", "SCT", "Pancreas"),
    "colon": Code("71854001", "SCT", "Colon"),
}


def sentence(structure: str) -> str:
    return f"a computerized tomography of a {structure}"


def organ_target(organ: str, label_value: int | None = None) -> TargetSpec:
    """The organ target of ``organ`` (e.g. ``"liver"``)."""
    if organ not in ORGAN_CODES:
        raise KeyError(f"unknown organ {organ!r}; known: {sorted(ORGAN_CODES)}")
    return TargetSpec(
        name=organ,
        kind="organ",
        sentence=sentence(organ),
        category=ANATOMICAL_STRUCTURE,
        type=ORGAN_CODES[organ],
        label_value=label_value,
    )


def tumor_target(organ: str, label_value: int | None = None) -> TargetSpec:
    """The tumor target inside ``organ``, e.g. ``tumor_target("liver")`` -> ``liver_tumor``."""
    if organ not in ORGAN_CODES:
        raise KeyError(f"unknown organ {organ!r}; known: {sorted(ORGAN_CODES)}")
    return TargetSpec(
        name=f"{organ}_tumor",
        kind="tumor",
        sentence=sentence(f"{organ} tumor"),
        category=ABNORMAL_STRUCTURE,
        type=NEOPLASM,
        organ=organ,
        label_value=label_value,
    )
