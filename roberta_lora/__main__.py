"""`python -m roberta_lora ...` runs the same CLI as `roberta-lora ...`."""

import sys

from roberta_lora.cli.main import main

sys.exit(main())
