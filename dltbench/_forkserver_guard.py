"""Imported only by the runner's forkserver (as a preload): it dies with the run's process.

multiprocessing's forkserver is meant to exit when the run's process closes its end of a
pipe, but after a ``kill -9`` of the run it was seen to linger (another process still held
that end), keeping its cells, and so their plugin processes, alive. With a parent-death
signal it goes at once; each cell has its own, and bwrap ends the plugin's whole PID
namespace with the cell.
"""

from .sandbox import die_with_parent

die_with_parent()
