"""Benchmarks of AIM Runtime against the bare vLLM OpenAI server: `python -m benchmarks.run`."""
