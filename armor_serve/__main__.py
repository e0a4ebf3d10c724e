import sys

from armor_serve.cli import main

sys.exit(main())
