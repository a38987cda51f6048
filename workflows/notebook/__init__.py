"""The notebook workflow: a shell (``workflow``) over the state table in
``domain.lifecycle``, with its phases and calls in their own modules:

- ``context``: the one carried model and the steps every part takes;
- ``start``, ``running``, ``teardown``: the phases, in the order a notebook lives them;
- ``events``: what happens without a command, read in the event table;
- ``host_calls``, ``fleet_calls``, ``syncs``: calls to the host, the fleet and the ledger,
  and the scheduling of syncs.
"""

from workflows import patches
from workflows.notebook.workflow import NotebookWorkflow

__all__ = ["NotebookWorkflow", "patches"]
