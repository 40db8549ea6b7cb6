"""One module per command: train (the SPOS supernet), search,
superkernel, retrain, finetune, evaluate, profile, export,
import-reference, pipeline.
"""
