import sys
import warnings

# Third-party deprecation notices (timm, MONAI) are for developers, not for the application's log.
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)

from tags.runtime import keep_freed_memory  # noqa: E402 - after the warning filters

from app import main

keep_freed_memory()  # this process runs one study: keep freed activations for reuse (docs/performance.md)
sys.exit(main())
