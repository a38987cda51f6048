"""``ainb``: the command line for the ainb REST API."""
