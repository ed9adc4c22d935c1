"""mario-apex: code shared by every role (config, protocol, transport, network, envs)."""
