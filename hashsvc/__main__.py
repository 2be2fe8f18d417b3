import sys

from hashsvc.cli import main

sys.exit(main())
