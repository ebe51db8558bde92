import sys

from nlilab.cli import main

sys.exit(main())
