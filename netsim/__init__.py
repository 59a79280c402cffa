"""Pure network model: link rates on a simulated clock, device compute times, round timing.

Never imports Flower: the strategies adapt it (strategies/network.py).
"""
