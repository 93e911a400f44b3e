"""The decision: fixed settings (fixed.py) or the planner (plan.py, on ladder.py's numbers, with
candidates.py and probe.py) emit a recipe. Nothing here builds the model it decides."""
