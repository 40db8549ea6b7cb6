import sys

from spnas.cli import main

sys.exit(main())
