"""Rows: every source (file or `datasets` dataset) read, checked and normalised to chat messages with their images and
videos; mixtures and held-out eval splits. Imports only sft.errors and other data/ modules.
"""
