import sys

from emorig.cli.main import main

sys.exit(main())
