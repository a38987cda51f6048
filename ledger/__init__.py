"""The usage ledger: where billed minutes are kept, exactly once, for good."""
