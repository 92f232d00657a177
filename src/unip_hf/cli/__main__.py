"""`python -m unip_hf.cli`: the `unip` command."""

import sys

from unip_hf.cli import main

sys.exit(main())
