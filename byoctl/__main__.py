"""`python -m byoctl ...`: see byoctl/cli.py."""

import sys

from byoctl.cli import main

sys.exit(main())
