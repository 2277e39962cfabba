"""Speed and memory harness (lands with the performance issue); timings live here, never in tests."""
