"""Segment codes are real SNOMED CT concepts, and DICOM's own CIDs put them where we use them."""

from __future__ import annotations

import pytest
from pydicom.sr._cid_dict import cid_concepts
from pydicom.sr._concepts_dict import concepts

from tags.targets import ABNORMAL_STRUCTURE, ANATOMICAL_STRUCTURE, NEOPLASM, ORGAN_CODES

SCT = concepts["SCT"]


def _sct_codes(cid: int) -> set:
    """SNOMED CT code values of a DICOM context group (pydicom's copy of PS3.16)."""
    return {code for keyword in cid_concepts[cid].get("SCT", []) for code in SCT[keyword]}


@pytest.mark.parametrize("code", [ANATOMICAL_STRUCTURE, ABNORMAL_STRUCTURE, NEOPLASM, *ORGAN_CODES.values()],
                         ids=lambda c: c.meaning)
def test_code_is_a_snomed_ct_concept_with_that_meaning(code):
    meanings = [m for entries in SCT.values() for value, (m, _) in entries.items() if value == code.value]
    assert code.scheme == "SCT" and meanings, f"{code.value} is not in pydicom's SNOMED CT concepts"
    assert any(code.meaning.lower().split()[0] in m.lower() for m in meanings), (code, meanings)


def test_codes_are_in_the_segmentation_context_groups():
    assert {ANATOMICAL_STRUCTURE.value, ABNORMAL_STRUCTURE.value} <= _sct_codes(7150)  # Segmentation Property Categories
    assert NEOPLASM.value in _sct_codes(7151) | _sct_codes(7153) | _sct_codes(7159) | _sct_codes(7160)
    organs = {c.value for c in ORGAN_CODES.values()}
    assert organs <= _sct_codes(7151) | _sct_codes(4)  # Segmentation Property Types / anatomic regions
