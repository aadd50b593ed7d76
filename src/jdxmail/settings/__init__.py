"""Settings: the model, reading and writing config files, and semantic checks."""
