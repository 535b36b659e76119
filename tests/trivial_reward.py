def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    """A trivial per-sample reward for the foundation smoke test: longer responses score higher."""
    return len(solution_str) / 100.0
