"""Analysis of tracked runs. Reads MLflow only; never imports the training code (`harness`)."""
