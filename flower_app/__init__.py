"""Flower app for measuring the communication cost of federated learning."""
