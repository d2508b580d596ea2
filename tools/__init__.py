"""Developer tools: model conversion, benchmarks, and the helpers they share with the tests.

Nothing in ``service/`` or ``training/`` imports this package; the tests and the benchmark
scripts do (``tools.loopback``, ``tools.stub_model``), so neither depends on the other.
"""
