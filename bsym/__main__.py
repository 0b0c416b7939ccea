import sys

from bsym.cli import main

sys.exit(main())
