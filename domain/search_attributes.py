"""Search attributes: they serve the list endpoint and the Temporal Web UI's filters."""

from temporalio.common import SearchAttributeKey

STATE = SearchAttributeKey.for_keyword("NotebookState")
PROJECT = SearchAttributeKey.for_keyword("NotebookProject")
NAME = SearchAttributeKey.for_keyword("NotebookName")
HOST = SearchAttributeKey.for_keyword("NotebookHost")
LABELS = SearchAttributeKey.for_keyword_list("NotebookLabels")
EDITOR = SearchAttributeKey.for_keyword("NotebookEditor")
FLAVOR = SearchAttributeKey.for_keyword("NotebookFlavor")
# Set at creation: the gateway finds a notebook's project from the id in its origin.
ID = SearchAttributeKey.for_keyword("NotebookId")

# name=type pairs for `temporal server start-dev --search-attribute`.
DEFINITIONS = {
    "NotebookState": "Keyword",
    "NotebookProject": "Keyword",
    "NotebookName": "Keyword",
    "NotebookHost": "Keyword",
    "NotebookLabels": "KeywordList",
    "NotebookEditor": "Keyword",
    "NotebookFlavor": "Keyword",
    "NotebookId": "Keyword",
}


def label_terms(labels: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in sorted(labels.items())]
