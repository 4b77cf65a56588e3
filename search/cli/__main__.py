"""``python -m search.cli``: what ``prunesearch submit`` runs on the cluster."""

import sys

from search.cli.parser import main

sys.exit(main())
