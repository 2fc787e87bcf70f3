"""Lesion report: per-lesion measurements as a DICOM SR (TID 1500) and as JSON.

One TID 1411 volumetric ROI group per lesion, referencing the SEG segment of its target (the
segment holds all lesions of the target; TID 1411 does not allow naming frames and a segment
together, so the lesion's slices and centroid are in tags_lesions.json), with finding type (the target's code), finding site
(the organ it lies in), algorithm, and measurements: volume (ml), long and short axis (mm,
axial, RECIST-style), mean and maximum attenuation (HU). A target without lesions gets a TID
1501 group "Lesion: Absent" ("Lesion: Indeterminate" when the organ mask was implausible and no
search ran). The SR is a Comprehensive 3D SR in the CT's study, new series.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Dict, List

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

import tags
from tags.lesions import Lesion, measure_lesions

from .seg_writer import MANUFACTURER, contributing_equipment
from .types import Segmentation

SR_SERIES_NUMBER = 9902
SR_SERIES_DESCRIPTION = "TAGS lesion measurements - NOT FOR CLINICAL USE"
ML = Code("mL", "UCUM", "milliliter")
MM = codes.UCUM.Millimeter
HU = Code("[hnsf'U]", "UCUM", "Hounsfield unit")


@dataclass
class TargetLesions:
    """Measured lesions of one tumor target, with the source slices they span."""

    name: str
    segment_number: int
    status: str
    lesions: List[Lesion]
    instance_numbers: List[tuple]  # (first, last) InstanceNumber of the CT slices per lesion

    def to_dict(self) -> dict:
        return {
            "segment_number": self.segment_number,
            "status": self.status,
            "lesion_count": len(self.lesions),
            "lesions": [
                {**les.to_dict(), "ct_instance_numbers": list(inst)} for les, inst in zip(self.lesions, self.instance_numbers)
            ],
        }


def measure(result: Segmentation, min_lesion_ml: float) -> List[TargetLesions]:
    """Lesions of every tumor target (segments are numbered as in the SEG: tumors first)."""
    p = result.ct.prepared
    organs = {o.target.name: o.mask for o in result.organs}
    source_of = {d: i for i, d in enumerate(_canonical_index(result.ct).values())}  # canonical d -> source index

    out = []
    for k, t in enumerate(result.tumors, start=1):
        lesions = measure_lesions(t.mask, p.hu, p.affine, organs, min_volume_ml=min_lesion_ml) if t.status == "ok" else []
        inst = []
        for les in lesions:
            a, b = (result.ct.datasets[source_of[d]].get("InstanceNumber") for d in les.slices)
            inst.append(tuple(sorted(int(v) for v in (a, b) if v is not None)))
        out.append(TargetLesions(t.target.name, k, t.status, lesions, inst))
    return out


def _code(c) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=c.value, scheme_designator=c.scheme, meaning=c.meaning)


def build_sr(result: Segmentation, seg, measured: List[TargetLesions]) -> hd.sr.Comprehensive3DSR:
    """The SR dataset; ``seg`` is the written SEG dataset the lesions refer to."""
    ct = result.ct
    algorithm = hd.sr.AlgorithmIdentification(name="TAGS", version=f"{tags.__version__} model {result.model_version}")
    device = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="TAGS", manufacturer_name=MANUFACTURER, model_name="TAGS tumor segmentation"),
    )
    targets = {t.target.name: t.target for t in result.tumors}
    organ_codes = {o.target.name: o.target.type for o in result.organs}
    groups = []
    for tl in measured:
        target = targets[tl.name]
        if not tl.lesions:
            # Not searched because the organ mask was implausible: nothing is known, so the SR
            # says "indeterminate", not "absent".
            assessed = tl.status != "organ_implausible"
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=hd.UID(), identifier=f"{tl.name}: {'no lesion' if assessed else 'not assessed, organ not found'}"),
                finding_type=_code(target.type), algorithm_id=algorithm,
                qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                    name=codes.SCT.Lesion, value=codes.SCT.Absent if assessed else codes.SCT.Indeterminate)],
            ))
            continue
        for les in tl.lesions:
            sites = [hd.sr.FindingSite(anatomic_location=_code(organ_codes[les.organ]))] if les.organ in organ_codes else None
            measurements = [
                hd.sr.Measurement(name=codes.SCT.Volume, value=round(les.volume_ml, 3), unit=ML),
                hd.sr.Measurement(name=codes.SCT.LongAxis, value=round(les.long_axis_mm, 2), unit=MM),
                hd.sr.Measurement(name=codes.SCT.ShortAxis, value=round(les.short_axis_mm, 2), unit=MM),
                hd.sr.Measurement(name=codes.DCM.AttenuationCoefficient, value=round(les.mean_hu, 1), unit=HU,
                                  derivation=codes.SCT.Mean),
                hd.sr.Measurement(name=codes.DCM.AttenuationCoefficient, value=round(les.max_hu, 1), unit=HU,
                                  derivation=codes.SCT.Maximum),
            ]
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{tl.name} lesion {les.number}"),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=tl.segment_number,
                    source_series=hd.sr.SourceSeriesForSegmentation(ct.series_uid),
                ),
                finding_type=_code(target.type), finding_sites=sites, algorithm_id=algorithm, measurements=measurements,
            ))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(ct.datasets) + [seg], content=report[0], series_instance_uid=hd.UID(), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
    )
    sr.SeriesDescription = SR_SERIES_DESCRIPTION
    now = datetime.datetime.now()
    sr.SeriesDate, sr.SeriesTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    sr.ContributingEquipmentSequence = contributing_equipment(result.model_name, result.model_version)
    return sr


def _canonical_index(ct) -> Dict[str, int]:
    """{CT SOP Instance UID: canonical d index} (axial series: slices stay on axis 0)."""
    n, flip = ct.prepared.reorientation.shape[0], ct.prepared.reorientation.flip[0]
    return {str(d.SOPInstanceUID): (n - 1 - i if flip else i) for i, d in enumerate(ct.datasets)}
