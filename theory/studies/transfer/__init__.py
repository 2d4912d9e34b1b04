"""The transfer study: every (head, n_s, n_t, seed, variant) cell of a config, its checks, report and plots."""
