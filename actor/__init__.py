"""The actor role: plays the game, streams transitions, shows and records it."""
