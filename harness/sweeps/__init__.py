"""Sweeps over experiment specs: Optuna studies (study/), campaign matrices (campaign.py) and the queue
their cells are handed out through (queue.py), and the worker processes both run (launch.py)."""
