"""Benchmarks of the package, run as modules from the repository root (``python -m bench.benchmark``): they measure
the music_flamingo that Python imports and take the tiny model, the reference CLI and the music from testkit."""
