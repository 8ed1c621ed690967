"""What every PutPlace process shares apart from the protocol: the one logging setup, the GC settings."""
