"""The sync engine: stage, plan, push, and the run that ties them."""
