"""`vivim-bench`: latency of the same Vivim model through every backend and precision, measured in one process.

Modules, one job each: `stats` (summary statistics), `timing` (CUDA-event / wall-clock measurement, peak memory),
`env` (environment block), `backends` (the benchmark rows), `report` (console table, JSON, CSV, Markdown, plots),
`cli` (the Typer app). Importing this package does not import torch.
"""
