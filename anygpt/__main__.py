import sys

from anygpt.cli import main

sys.exit(main())
