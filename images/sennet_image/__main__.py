"""`python3 -m sennet_image COMMAND`: the image build's command line."""

from __future__ import annotations

import sys

from sennet_image.cli import main

sys.exit(main(sys.argv[1:]))
