"""A finished run's folder: the manifest, artifacts, export-adapter, merge and predict. May import any stage
below run/; never run/.
"""
