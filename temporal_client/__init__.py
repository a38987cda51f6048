"""The platform's side of the Temporal client, shared by the API, the Python client, the
workers and the activities: connecting (connect.py), typed calls to the notebook and
fleet workflows' updates and queries (notebook_calls.py, fleet_calls.py), and liveness
and takeover of notebooks closed from outside (revival.py).

Never imports workflow code (workflows/ is sandboxed; the names its handlers answer to
are in domain/protocol.py), nor worker code."""
