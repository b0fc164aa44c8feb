"""The HTML pages (the preview page and the run report) and their templates (pages/templates/). Never imports
run/, model/ or plan/.
"""
