"""Tracking: the Tracker interface and open_run (base.py), the MLflow backend (mlflow.py), the run
queries shared by resume, campaigns and studies (store.py) and provenance tags."""
