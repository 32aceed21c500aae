"""Write this worker's process id to `$PID_DIR/rank{RANK}.pid`, then sleep past any sensible timeout.

Tests the harness's timeout path and that it leaves no worker behind.
"""

import os
import time
from pathlib import Path

if __name__ == "__main__":
    Path(os.environ["PID_DIR"], f"rank{os.environ['RANK']}.pid").write_text(str(os.getpid()))
    time.sleep(600)
