"""Print what a result folder holds, read back from the DICOM SEG itself.

    python -m operators.seg_summary OUTPUT_FOLDER

One line per segment: voxels (counted in the SEG's frames, decoded by highdicom) and ml (with
the CT spacing from tags_results.json), and the SEG's path.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List

import highdicom as hd
import numpy as np

from .seg_writer import RESULTS_JSON


def summarize(folder: str | Path) -> List[str]:
    folder = Path(folder)
    info = json.loads((folder / RESULTS_JSON).read_text())
    seg_path = folder / info["seg_file"]
    seg = hd.seg.segread(seg_path)
    sources = [uid for _, _, uid in seg.get_source_image_uids()]  # every CT slice the SEG references
    voxel_ml = float(np.prod(info["ct"]["spacing_mm"])) / 1000.0
    lines = [f"SEG: {seg_path}"]
    for s in seg.SegmentSequence:
        n = int(s.SegmentNumber)
        pixels = seg.get_pixels_by_source_instance(  # slices without a frame of the segment are empty
            source_sop_instance_uids=sources, segment_numbers=[n], assert_missing_frames_are_empty=True)
        voxels = int(np.count_nonzero(pixels))
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
