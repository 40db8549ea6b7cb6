"""Datasets on disk and batch augmentation on the device."""
