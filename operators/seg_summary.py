"""Print what a result folder holds, read back from the DICOM SEG itself.

    python -m operators.seg_summary OUTPUT_FOLDER

One line per segment: voxels (counted in the SEG's frames) and ml (with the CT spacing from
tags_results.json), and the SEG's path.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List

import numpy as np
import pydicom

from .seg_writer_operator import RESULTS_JSON


def summarize(folder: str | Path) -> List[str]:
    folder = Path(folder)
    info = json.loads((folder / RESULTS_JSON).read_text())
    seg_path = folder / info["seg_file"]
    seg = pydicom.dcmread(seg_path)
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    shared = seg.SharedFunctionalGroupsSequence[0]

    def segment_of(frame) -> int:
        item = frame if "SegmentIdentificationSequence" in frame else shared
        return int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)

    numbers = [segment_of(f) for f in seg.PerFrameFunctionalGroupsSequence]
    voxel_ml = float(np.prod(info["ct"]["spacing_mm"])) / 1000.0
    lines = [f"SEG: {seg_path}"]
    for s in seg.SegmentSequence:
        n = int(s.SegmentNumber)
        voxels = int(sum(int(frames[i].sum()) for i, k in enumerate(numbers) if k == n))
        lines.append(f"  {s.SegmentLabel}: {voxels} voxels, {voxels * voxel_ml:.2f} ml")
    return lines


def main(argv: List[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__)
        return 2
    print("\n".join(summarize(argv[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
