"""Reproduction drivers: ``python -m experiments.reproduce TARGET``."""
