import sys
import warnings

# Third-party deprecation notices (timm, MONAI) are for developers, not for the application's log.
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)

from tags.runtime import keep_freed_memory, lean_imports, process_started  # noqa: E402 - after the warning filters

lean_imports()  # before MONAI, the SDK and the model's libraries are imported: docs/performance.md "Start-up"

from app import main  # noqa: E402

keep_freed_memory()  # this process runs one study: keep freed activations for reuse (docs/performance.md)
sys.exit(main(started=process_started()))
