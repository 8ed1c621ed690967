import sys

from putplace_agent.cli import main

sys.exit(main())
