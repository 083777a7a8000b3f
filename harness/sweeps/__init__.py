"""Sweeps over experiment specs: Optuna studies (study.py) and campaign matrices (campaign.py)."""
