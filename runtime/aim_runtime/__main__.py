"""`python -m aim_runtime ...` (the container entrypoint) is the `aim-runtime` command."""

import sys

from aim_runtime.cli import main

if __name__ == "__main__":
    sys.exit(main())
