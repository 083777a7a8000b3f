"""Specs: the schema (schema.py), loading with base: and overrides (load.py), study and campaign specs
(sweeps.py), and the catalog of every named component (catalog.py). Imports no torch."""
