"""The postback ledger: the system of record for users' virtual currency."""
