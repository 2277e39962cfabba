"""Speed and memory harness (lands with the performance issue); timings live here, never in tests."""

from axial_keras import cli as _cli

# `python -m benchmarks.run` (`make bench`) starts TensorFlow without its C++ start-up lines,
# as the other command-line modules do; its worker processes inherit the level.
_cli.quiet_start_under_python_m()
