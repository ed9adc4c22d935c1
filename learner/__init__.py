"""The learner role: trains the Q-network from prioritized batches and publishes weights."""
