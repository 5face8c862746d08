"""The tools around the assignment, one module per command: data preparation, token files, experiments, probes,
evaluation and the Hugging Face format."""
