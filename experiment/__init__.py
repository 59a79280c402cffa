"""The experiment core: run-config, datasets, partitions, models, local training, the recorder.

Above the pure cores (fedcodec, netsim, protocol, ledger), below the mods, strategies and apps.
"""
