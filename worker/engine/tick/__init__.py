"""The tick: which battles are due, within the API budget, and their dispatch."""
