"""Every userfaultfd operation x memory type x documented outcome, as one table (matrix.py)."""
