"""A finished run's folder: the manifest, artifacts, export-adapter, merge and predict. May import config/, data/,
family/, labels/, eval/, model/; never run/, check/ or pages/ (the report reads the manifest, not the other way).
"""
