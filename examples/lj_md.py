"""Lennard-Jones MD logged with trajstore: see src/trajstore/examples/lj_md.py.

The simulation ships inside the package (the demo and the container image run
it as ``python -m trajstore.examples.lj_md``); this file runs the same thing
from a checkout: ``python examples/lj_md.py --local lj.h5``.
"""

import sys

from trajstore.examples.lj_md import main

sys.exit(main())
