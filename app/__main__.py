import atexit
import os
import sys
import warnings

# Third-party deprecation notices (timm, MONAI) are for developers, not for the application's log.
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)

from tags.runtime import (  # noqa: E402 - after the warning filters
    LEAN_PACKAGES, MODEL_LEAN_PACKAGES, SDK_LEAN_PACKAGES, keep_freed_memory, lean_imports, process_started,
)

# before MONAI, the SDK and the model's libraries are imported (docs/performance.md, "Start-up")
lean_imports(LEAN_PACKAGES + SDK_LEAN_PACKAGES + MODEL_LEAN_PACKAGES)

from app import main  # noqa: E402

keep_freed_memory()  # this process runs one study: keep freed activations for reuse (docs/performance.md)
code = main(started=process_started())
# The results are written, moved into the output folder and closed: run the exit handlers a
# normal exit runs (logging flushed, finalizers; about 10 ms), then leave without the
# interpreter tearing down the SDK's, torch's and the model's objects one by one (1.3 s of
# every run on 2 EPYC cores, docs/performance.md "Start-up").
atexit._run_exitfuncs()
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
