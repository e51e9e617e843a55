"""Paper-reproduction experiments: each module runs one paper's evaluation end to end."""
