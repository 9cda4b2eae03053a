import sys

from bhsearch.cli import main

sys.exit(main())
