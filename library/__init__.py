"""Computer-vision experiment campaigns on Ray: data, models, training, tracking, plots.

Plain PyTorch throughout; Ray appears only in the jobs and in the Tune adapter.
"""
__version__ = "0.1.0"
