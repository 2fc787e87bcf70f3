"""Benchmarks of the TAGS model, outside the model library the application loads.

    python -m benchmarks.bench [--model FOLDER] ...     (also installed as ``tags-bench``)

* :mod:`benchmarks.bench`: one TAGS window forward against this machine's matmul peak, and TAGS
  beside a 3DSAM-adapter-style network on the same region of interest (docs/performance.md);
* :mod:`benchmarks.peer_3dsam`: that 3DSAM-adapter-style network, written from its description.

Not part of the MAP image (scripts/map_context.py copies only the application's packages).
"""
