"""ssm-profile: which parts of a state-space language model can be pruned, by how much, at what loss."""

__version__ = "0.1.0"
