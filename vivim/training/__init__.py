"""vivim-train's parts, one job each: the run's settings (`config`), the resume-state file and its checks (`state`),
processes and devices (`environment`), the training and validation data (`data`), --init weights (`init_weights`) and
the epoch loop with its checkpoints (`loop`). The command line and the run's order of steps are in `vivim.train`."""
