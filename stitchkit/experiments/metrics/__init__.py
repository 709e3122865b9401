"""Quality metrics of an experiment's images."""
