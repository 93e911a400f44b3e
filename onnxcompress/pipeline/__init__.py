"""compress() as stages (stages.py): prepare, reference outputs, select, calibrate, decide,
build (build.py: a recipe made into a model), save, report (report.py), verify."""
