"""Read one CT series from a folder of DICOM files with pydicom (training-side utility).

The application uses the MONAI Deploy SDK's loader instead; this reader exists so that the
training package can turn a DICOM series into a volume without Holoscan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np
import pydicom


def read_series(folder: str | Path) -> Tuple[np.ndarray, np.ndarray]:
    """Returns (HU volume (D, H, W) float32, affine (d, h, w) -> LPS) of the single series in folder.

    Slices are sorted along the slice normal; HU = stored * RescaleSlope + RescaleIntercept.
    """
    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    ds = [pydicom.dcmread(str(f)) for f in files]
    ds = [d for d in ds if "ImagePositionPatient" in d and "PixelData" in d]
    if len(ds) < 2:
        raise ValueError(f"{folder}: fewer than two image slices with positions")
    iop = np.array(ds[0].ImageOrientationPatient, dtype=float)
    row, col = iop[:3], iop[3:]  # direction of increasing column index, of increasing row index
    normal = np.cross(row, col)
    ds.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, dtype=float))))
    vol = np.stack(
        [d.pixel_array.astype(np.float32) * float(getattr(d, "RescaleSlope", 1)) + float(getattr(d, "RescaleIntercept", 0)) for d in ds]
    )
    p0 = np.array(ds[0].ImagePositionPatient, dtype=float)
    p1 = np.array(ds[1].ImagePositionPatient, dtype=float)
    dr, dc = (float(v) for v in ds[0].PixelSpacing)  # row spacing, column spacing
    a = np.zeros((4, 4))
    a[3, 3] = 1.0
    a[:3, 0] = p1 - p0
    a[:3, 1] = col * dr
    a[:3, 2] = row * dc
    a[:3, 3] = p0
    return vol, a
