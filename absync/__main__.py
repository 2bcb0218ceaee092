import sys

from absync.cli import main

sys.exit(main())
