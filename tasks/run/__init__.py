"""Run bookkeeping: the step cache, run folders, input checks, progress, the report."""
