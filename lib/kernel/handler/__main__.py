"""``python -m lib.kernel.handler FD``: the process a SpawnedHandler starts; serves the uffd that
arrives on the unix socket FD (lib/kernel/handler/placements.py spawned_main)."""

import sys

from lib.kernel.handler.placements import spawned_main

if __name__ == "__main__":
    spawned_main(int(sys.argv[1]))
