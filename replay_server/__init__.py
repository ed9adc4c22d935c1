"""The replay server role: the prioritized replay buffer behind a ZeroMQ service."""
