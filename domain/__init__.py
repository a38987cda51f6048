"""Domain types shared by the workflows, activities, worker and API.

Pure data and rules only: no I/O and no third-party imports beyond pydantic, so a
workflow module may pass these through Temporal's sandbox.
"""
