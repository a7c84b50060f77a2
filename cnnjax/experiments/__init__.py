"""The lecture's experiments as commands: each trains or measures, and leaves figures and tables in its workdir."""
