"""Federated learning on Flower: the ServerApp, the ClientApp and what they exchange.

The same apps run in simulation (``edgeai simulate``) and on a real fleet.
"""
