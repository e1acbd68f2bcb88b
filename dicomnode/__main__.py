import sys

from dicomnode.cli import main

sys.exit(main())
