import sys

from rnnstream.cli import main

sys.exit(main())
