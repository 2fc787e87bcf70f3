"""Series to volume: the SDK's DICOMSeriesToVolumeOperator, naming the file it could not use.

The SDK decodes and rescales every slice in one step; when that fails its message names no
file ("Failed to apply rescale to DICOM volume."). On that failure path only, each instance is
decoded on its own to find the damaged one (:func:`operators.dicom_checks.find_undecodable`).
"""

from __future__ import annotations

import logging

from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator

from tags.preprocessing import CTInputError

from .dicom_checks import find_undecodable

log = logging.getLogger(__name__)


class CTVolumeOperator(DICOMSeriesToVolumeOperator):
    """DICOMSeriesToVolumeOperator that raises :class:`CTInputError` naming the damaged file
    (ports as the SDK operator's: input ``study_selected_series_list``, output ``image``)."""

    def convert_to_image(self, study_selected_series_list):
        try:
            return super().convert_to_image(study_selected_series_list)
        except CTInputError:
            raise
        except Exception as e:  # noqa: BLE001 - diagnosed below, the original kept in the debug log
            log.debug("the SDK could not build the volume", exc_info=True)
            series = study_selected_series_list[0].selected_series[0].series
            culprit = find_undecodable(i.get_native_sop_instance() for i in series.get_sop_instances())
            if culprit:
                raise CTInputError(f"CT file {culprit}") from None
            raise CTInputError(f"the CT volume could not be built from the series ({type(e).__name__}: "
                               "no single damaged file was found)") from None
