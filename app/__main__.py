import sys

from tags.runtime import keep_freed_memory

from app import main

keep_freed_memory()  # this process runs one study: keep freed activations for reuse (docs/performance.md)
sys.exit(main())
