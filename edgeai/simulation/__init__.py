"""Simulation mode: many virtual devices on Flower's simulation engine (Ray)."""
