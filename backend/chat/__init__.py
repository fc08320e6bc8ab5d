"""The chat layer: messages, the Kimi chat format and the backends the swarm talks to."""
